"""Write one Zarr v3 array the way zarr-python does, byte for byte, without its event loop.

The store's arrays are ONE shard file each (``sharding_indexed``: inner chunks ``bytes`` + ``blosc``
(the store's codec), one blosc block per chunk; the index ``bytes`` + ``crc32c`` at the end). zarr
encodes that through its asyncio codec pipeline, one ``to_thread`` round trip per inner chunk, which
measured here as ~40 % of the write. :func:`write_array` encodes the inner chunks directly with
numcodecs' Blosc (the codec zarr itself calls, one thread), in zarr's own order (Morton order of the
chunk grid), skips all-zero chunks as zarr does (``write_empty_chunks=False``: index entry
``2**64 - 1``; no shard file when every chunk is empty), appends the crc32c-checked index and writes
the same ``zarr.json``. zarr reads the result (tests compare files byte for byte with zarr's writer).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["SHARD_KEY", "array_checksum", "array_metadata", "encode_shard", "morton_order", "write_array", "write_group"]

SHARD_KEY = "c/0/0/0"  # the one shard of an array whose shard covers it (default key encoding, "/")
_EMPTY = 2**64 - 1


def array_checksum(array: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the array's C-order bytes (in its own dtype), hashed in place when contiguous.

    >>> array_checksum(np.zeros(2, np.uint8))[:15]
    'sha256:96a296d2'
    >>> array_checksum(np.arange(6.0).reshape(2, 3).T) == array_checksum(np.arange(6.0).reshape(2, 3).T.copy())
    True
    """
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def morton_order(grid: tuple[int, ...]) -> np.ndarray:
    """Chunk coordinates of a ``grid`` in zarr's shard order: Morton (Z-order) codes with
    ``(n - 1).bit_length()`` bits per axis, interleaved axis 0 first, out-of-grid codes dropped.

    >>> morton_order((2, 3)).tolist()
    [[0, 0], [1, 0], [0, 1], [1, 1], [0, 2], [1, 2]]
    """
    bits = [(n - 1).bit_length() for n in grid]
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, len(grid))
    code, out_bit = np.zeros(len(coords), dtype=np.int64), 0
    for bit in range(max(bits, default=0)):
        for axis, nbits in enumerate(bits):
            if bit < nbits:
                code |= ((coords[:, axis] >> bit) & 1) << out_bit
                out_bit += 1
    return coords[np.argsort(code, kind="stable")]


#: numcodecs' Blosc shuffle constants by their Zarr v3 names
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def array_metadata(shape: tuple[int, ...], dtype: np.dtype, inner: tuple[int, ...], codec: Mapping[str, Any],
                   attributes: Mapping[str, Any]) -> dict:
    """The ``zarr.json`` zarr-python writes for one shard of ``inner`` chunks compressed with blosc
    ``codec`` (``{"cname", "clevel", "shuffle"}``, one blosc block per chunk).

    >>> codec = {"cname": "lz4hc", "clevel": 4, "shuffle": "shuffle"}
    >>> array_metadata((5, 6), np.dtype("uint8"), (4, 4), codec, {})["chunk_grid"]["configuration"]
    {'chunk_shape': [8, 8]}
    """
    dtype = np.dtype(dtype)
    shard = [-(-n // c) * c for n, c in zip(shape, inner)]
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    blosc = {"name": "blosc", "configuration": {
        "typesize": dtype.itemsize, "cname": codec["cname"], "clevel": codec["clevel"], "shuffle": codec["shuffle"],
        "blocksize": int(np.prod(inner)) * dtype.itemsize}}
    return {
        "shape": list(shape), "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if dtype.kind == "f" else 0,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(inner), "codecs": [little if dtype.itemsize > 1 else {"name": "bytes"}, blosc],
            "index_codecs": [little, {"name": "crc32c"}], "index_location": "end"}}],
        "attributes": dict(attributes), "zarr_format": 3, "node_type": "array", "storage_transformers": [],
    }


def encode_shard(data: np.ndarray, inner: tuple[int, ...], codec: Mapping[str, Any]) -> bytes | None:
    """The shard file of ``data`` (one shard covering it): encoded non-empty chunks in Morton order,
    then the index and its crc32c; ``None`` when every chunk is all zeros (zarr writes no file).
    With ``codec["dense"]`` = ``{"cname", "clevel", "above"}``, a chunk whose encoding is larger
    than ``above`` × its raw bytes is encoded again with that codec (same shuffle and block), and
    the smaller frame is kept (blosc frames carry their codec, so zarr decodes either).

    >>> codec = {"cname": "zstd", "clevel": 5, "shuffle": "shuffle"}
    >>> shard = encode_shard(np.arange(6, dtype=np.uint8).reshape(2, 3), (2, 2), codec)
    >>> len(shard) > 2 * 16 + 4
    True
    """
    import numcodecs.blosc as blosc
    from numcodecs import CRC32C, Blosc

    data = np.ascontiguousarray(data)
    blosc_codec = Blosc(cname=codec["cname"], clevel=codec["clevel"], shuffle=_SHUFFLE[codec["shuffle"]],
                        blocksize=int(np.prod(inner)) * data.itemsize, typesize=data.itemsize)
    dense = codec.get("dense")  # {"cname", "clevel", "above"}: a second codec for poorly compressed chunks
    dense_codec = None if not dense else Blosc(
        cname=dense["cname"], clevel=dense["clevel"], shuffle=_SHUFFLE[codec["shuffle"]],
        blocksize=int(np.prod(inner)) * data.itemsize, typesize=data.itemsize)
    grid = tuple(-(-n // c) for n, c in zip(data.shape, inner))
    index = np.full(grid + (2,), _EMPTY, dtype="<u8")
    parts, start = [], 0
    padded = np.zeros(inner, dtype=data.dtype.newbyteorder("<"))
    previous, blosc.use_threads = blosc.use_threads, False  # one thread: workers are single-core
    try:
        for coord in morton_order(grid).tolist():
            box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coord, inner, data.shape))
            block = data[box]
            if block.flat[0] == 0 and not block.any():  # first voxel: a cheap exit for z-scored images
                continue  # zarr's write_empty_chunks=False: an all-fill chunk is not stored
            if block.shape == tuple(inner):
                chunk = np.ascontiguousarray(block, dtype=padded.dtype)
            else:  # an edge chunk: zarr pads it to the full inner shape with the fill value
                padded[...] = 0
                padded[tuple(slice(0, s) for s in block.shape)] = block
                chunk = padded
            encoded = blosc_codec.encode(chunk)
            if dense_codec is not None and len(encoded) > dense["above"] * chunk.nbytes:
                second = dense_codec.encode(chunk)  # a blosc frame names its own codec: any reader decodes it
                encoded = second if len(second) < len(encoded) else encoded
            index[tuple(coord)] = (start, len(encoded))
            parts.append(encoded)
            start += len(encoded)
    finally:
        blosc.use_threads = previous
    if not parts:
        return None
    parts.append(CRC32C().encode(index.tobytes()))
    return b"".join(bytes(p) for p in parts)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write one shard file (a module attribute: the disk-full test replaces it)."""
    path.write_bytes(data)


def _write_json(path: Path, value: dict) -> int:
    data = json.dumps(value, indent=2).encode()
    path.write_bytes(data)
    return len(data)


def write_group(folder: Path, attributes: Mapping[str, Any] | None = None) -> int:
    """A Zarr v3 group's ``zarr.json`` in ``folder`` (created), as zarr-python writes it; returns its size."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_json(folder / "zarr.json", {"attributes": dict(attributes or {}), "zarr_format": 3,
                                               "node_type": "group"})


def write_array(folder: Path, data: np.ndarray, *, chunks: int, codec: Mapping[str, Any],
                attributes: Mapping[str, Any]) -> tuple[str, int]:
    """Write ``data`` as a Zarr v3 array in ``folder`` (one shard of ``chunks``³ inner chunks, blosc
    ``codec`` = ``{"cname", "clevel", "shuffle"}``); ``attributes`` gain ``checksum``. Returns the
    checksum (``"sha256:"`` of the C-order bytes) and the bytes written.

    >>> import tempfile, zarr
    >>> folder = Path(tempfile.mkdtemp()) / "a"
    >>> codec = {"cname": "lz4hc", "clevel": 4, "shuffle": "shuffle"}
    >>> checksum, nbytes = write_array(folder, np.arange(24, dtype=np.float16).reshape(2, 3, 4), chunks=2,
    ...                                codec=codec, attributes={"x": 1})
    >>> float(zarr.open_array(str(folder), mode="r")[1, 2, 3]), zarr.open_array(str(folder)).attrs["x"]
    (23.0, 1)
    """
    data = np.ascontiguousarray(data)
    checksum = array_checksum(data)
    inner = tuple(min(chunks, n) for n in data.shape)
    folder.mkdir(parents=True, exist_ok=True)
    meta = array_metadata(data.shape, data.dtype, inner, codec, {**attributes, "checksum": checksum})
    nbytes = _write_json(folder / "zarr.json", meta)
    shard = encode_shard(data, inner, codec)
    if shard is not None:
        for depth in range(SHARD_KEY.count("/"), 0, -1):  # c, c/0, c/0/0: new folders, one call each
            os.mkdir(folder / SHARD_KEY.rsplit("/", depth)[0])
        _write_bytes(folder / SHARD_KEY, shard)
        nbytes += len(shard)
    return checksum, nbytes
