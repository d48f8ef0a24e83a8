"""The ``zshard`` encoding: one stored Zarr array as one blob (a tar member of a WebDataset shard).

Version 1 carries the array's own files, byte for byte, so a sample is exactly as large as the
Zarr copy and a region read decodes only the inner chunks inside it (through
:mod:`openmind_prep.store.region_read`, the reader the Zarr dataset uses)::

    8 bytes  b"OMZSHRD1"
    8 bytes  N, uint64 little-endian
    N bytes  UTF-8 JSON {"files": [[name, nbytes], ...]}  (names relative to the array: zarr.json, c/0/0/0)
    ...      the files' bytes, concatenated in that order

A blob is untrusted input. Before anything is allocated, :func:`decode_array` checks the header
(names relative, no ``..``, sizes that add up to the blob) and the declared array against the
bytes the blob holds (:func:`check_declared_size`): a 1 kB blob cannot make a reader fill 4 GB.
Tar member names come from :func:`tar_key` and are always relative; :func:`check_member_name`
is the reader's side of that rule.

``wds.WebDataset(urls).decode(decode_zshard)`` gives plain WebDataset users NumPy arrays.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from openmind_prep.core.paths import leaves_root

MAGIC = b"OMZSHRD1"
EXTENSION = "zshard"
#: Decoded arrays up to this size need no justification (an all-zero mask stores no chunks at all).
FREE_BYTES = 256 * 2**20
#: Above it, a blob must hold at least 1 byte per this many decoded bytes (real volumes: 2-5000).
MAX_EXPANSION = 1024
_HEADER = struct.Struct("<8sQ")


def tar_key(key: str) -> str:
    """Image key → tar member stem (``.`` and ``%`` percent-encoded, ``/`` kept); always relative.

    >>> tar_key("ds1/sub-1/anat/sub-1_acq-1.5T_T1w")
    'ds1/sub-1/anat/sub-1_acq-1%2E5T_T1w'
    >>> untar_key(tar_key("a/b.c%d")) == "a/b.c%d"
    True
    """
    check_member_name(key, "image key")
    return quote(key, safe="/").replace(".", "%2E")


def untar_key(stem: str) -> str:
    """Inverse of :func:`tar_key`; refuses stems that decode to an absolute or ``..`` path."""
    return check_member_name(unquote(stem), "tar member")


def check_member_name(name: str, what: str = "tar member") -> str:
    """``name`` if it is a relative path without ``..`` or empty parts, else ``ValueError``.

    >>> check_member_name("ds1/a.image.zshard")
    'ds1/a.image.zshard'
    >>> check_member_name("../etc/passwd")
    Traceback (most recent call last):
    ValueError: tar member '../etc/passwd': not a relative path inside the shard
    """
    if leaves_root(name) or "\\" in name:
        raise ValueError(f"{what} {name!r}: not a relative path inside the shard")
    return name


def encode_array(folder: Path) -> bytes:
    """A stored Zarr array folder (``zarr.json`` + shard files) → one ``zshard`` blob.

    >>> import tempfile
    >>> from openmind_prep.store.store import Store
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
    >>> _ = s.write_case("a", {"image": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}, {})
    >>> float(decode_array(encode_array(s.root / "a" / "image"))[1, 2, 3])
    23.0
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    names = [p.relative_to(folder).as_posix() for p in files]
    if "zarr.json" not in names:
        raise FileNotFoundError(f"{folder}: not a Zarr array (no zarr.json)")
    names.remove("zarr.json")
    names.insert(0, "zarr.json")
    blobs = [(folder / n).read_bytes() for n in names]
    header = json.dumps({"files": [[n, len(b)] for n, b in zip(names, blobs)]}).encode()
    return b"".join([_HEADER.pack(MAGIC, len(header)), header, *blobs])


def _files(view: memoryview, name: str) -> dict[str, memoryview]:
    """The blob's files as slices of ``view``, after checking every header field."""
    if len(view) < _HEADER.size or bytes(view[:8]) != MAGIC:
        raise ValueError(f"{name}: not a zshard blob (bad magic)")
    _, n = _HEADER.unpack_from(view)
    if n > len(view) - _HEADER.size:
        raise ValueError(f"{name}: damaged zshard header (says {n} bytes, blob has {len(view)})")
    try:
        files = json.loads(bytes(view[_HEADER.size:_HEADER.size + n]))["files"]
        files = [(str(f), int(s)) for f, s in files if isinstance(f, str) and isinstance(s, int)] \
            if isinstance(files, list) and all(isinstance(e, list) and len(e) == 2 for e in files) else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: damaged zshard header ({type(err).__name__})") from None
    if files is None:
        raise ValueError(f"{name}: damaged zshard header (files must be [name, size] pairs)")
    start, contents = _HEADER.size + n, {}
    for fname, size in files:
        check_member_name(fname, f"{name}: file")
        if size < 0 or start + size > len(view) or fname in contents:
            raise ValueError(f"{name}: damaged or truncated zshard ({fname}: {size} bytes at {start} of {len(view)})")
        contents[fname] = view[start:start + size]
        start += size
    if "zarr.json" not in contents:
        raise ValueError(f"{name}: damaged zshard (no zarr.json)")
    return contents


def check_declared_size(layout: Any, held: int, name: str) -> None:
    """Refuse an array whose decoded size is out of proportion to the ``held`` bytes of its blob.

    >>> from types import SimpleNamespace as A
    >>> check_declared_size(A(shape=(1000,) * 3, dtype=np.dtype("f4")), 1248, "x.zshard")
    Traceback (most recent call last):
    ValueError: x.zshard: declares 4000000000 bytes (1000x1000x1000 float32) but holds only 1248
    """
    declared = int(np.prod(layout.shape, dtype=object)) * layout.dtype.itemsize
    if declared > FREE_BYTES and declared > MAX_EXPANSION * held:
        shape = "x".join(map(str, layout.shape))
        raise ValueError(f"{name}: declares {declared} bytes ({shape} {layout.dtype.name}) but holds only {held}")


def decode_array(blob: bytes | memoryview, name: str = "<blob>"):
    """A ``zshard`` blob → read-only :class:`openmind_prep.store.region_read.ShardedArray` over it.

    Nothing is copied or decompressed up front: slicing decodes only the chunks it touches,
    straight from the blob. ``name`` (e.g. ``shard.tar:key.image.zshard``) goes into errors.
    """
    from openmind_prep.store.region_read import ShardedArray, parse_layout

    view = memoryview(blob).cast("B")
    contents = _files(view, name)
    try:
        meta = json.loads(bytes(contents["zarr.json"]))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: damaged zarr.json ({type(err).__name__})") from None
    layout = parse_layout(meta, name)
    check_declared_size(layout, len(view), name)
    return ShardedArray(layout, contents.get)


def decode_zshard(key: str, data: bytes) -> np.ndarray | None:
    """A WebDataset decoder handler: ``*.zshard`` members → NumPy arrays, anything else untouched.

    >>> import tempfile
    >>> from openmind_prep.store.store import Store
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
    >>> _ = s.write_case("a", {"image": np.ones((2, 3, 4), np.float16)}, {})
    >>> decode_zshard("image.zshard", encode_array(s.root / "a" / "image")).shape
    (2, 3, 4)
    """
    if key.rsplit(".", 1)[-1].lower() != EXTENSION:
        return None
    return decode_array(data, key)[...]
