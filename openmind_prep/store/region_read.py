"""Read a region of a stored array by decoding only the inner chunks it touches (the one read path).

Both loaders read through here: :class:`loaders.ZarrVolumeDataset` (array folders of the store) and
the WebDataset decoder (``zshard`` blobs, :func:`openmind_prep.shards.zshard.decode_array`). The arrays are
the store's layout (``openmind_prep.store.store``): Zarr v3, ``sharding_indexed`` with inner codecs
``bytes`` + ``blosc`` and the shard index (``bytes`` + ``crc32c``) at the end of each shard file.
Anything else is refused with a clear error naming the array.

A read of ``region`` (zyx slices):

1. reads the index of each shard the region touches (``16 * chunks + 4`` bytes, crc32c-checked);
2. per inner chunk inside the region, takes only that chunk's bytes (a slice of the shard file's
   ``mmap`` or of the blob's ``memoryview``: nothing else is read, copied or parsed);
3. decompresses it with one blosc thread into a reused chunk buffer (``blosc_decompress_ctx``: no
   global blosc thread pool, so forked DataLoader workers cannot deadlock on it) and copies the
   part inside the region into the output. Missing chunks/shards read as the fill value (as zarr).

The values equal zarr's own read (``tests/test_region_read.py`` checks both against each other).
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

_EMPTY = 2**64 - 1  # shard index entry of a chunk that was never written
_BLOSC_HEADER = struct.Struct("<BBBBIII")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes


@dataclass(frozen=True)
class ArrayLayout:
    """What a region read needs from an array's ``zarr.json``.

    >>> meta = {"zarr_format": 3, "node_type": "array", "shape": [5, 6, 7], "data_type": "uint8",
    ...     "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8, 8, 8]}},
    ...     "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    ...     "fill_value": 0, "codecs": [{"name": "sharding_indexed", "configuration": {
    ...     "chunk_shape": [4, 4, 4], "codecs": [{"name": "bytes"}], "index_location": "end",
    ...     "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}]}
    >>> layout = parse_layout(meta, "a")
    >>> layout.chunk_shape, layout.per_shard, layout.shard_key((1, 0, 2))
    ((4, 4, 4), (2, 2, 2), 'c/1/0/2')
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    fill_value: Any
    blosc: bool
    index_crc: bool
    separator: str = "/"

    @property
    def per_shard(self) -> tuple[int, ...]:
        """Inner chunks per shard along each axis."""
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape))

    def shard_key(self, shard: Sequence[int]) -> str:
        """File name of a shard, relative to the array folder."""
        return self.separator.join(["c", *map(str, shard)])


#: Bounds on what an array may declare (ours: 64³ chunks, one shard): a reader allocates one chunk
#: and walks the chunk grid, so a hostile ``zarr.json`` must not make either huge.
MAX_CHUNK_BYTES, MAX_CHUNKS = 256 * 2**20, 2**20


def parse_layout(meta: Mapping[str, Any], name: str) -> ArrayLayout:
    """Validate a ``zarr.json`` (dict) as the store's layout; ``name`` goes into errors."""
    try:
        return _parse_layout(meta, name)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError) as err:
        if isinstance(err, ValueError) and str(err).startswith(f"{name}: unsupported"):
            raise
        raise ValueError(f"{name}: unsupported Zarr array layout ({type(err).__name__}: {err})") from None


def _parse_layout(meta: Mapping[str, Any], name: str) -> ArrayLayout:
    def refuse(reason: str) -> ValueError:
        return ValueError(f"{name}: unsupported Zarr array layout ({reason}); expected the openmind-prep store's "
                          "zarr v3 sharding_indexed [bytes, blosc] with index [bytes, crc32c] at the end")

    if not isinstance(meta, Mapping) or meta.get("zarr_format") != 3 or meta.get("node_type", "array") != "array":
        raise refuse("not a zarr v3 array")
    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        raise refuse(f"codecs {[c.get('name') for c in codecs]}")
    config = codecs[0]["configuration"]
    inner = [c.get("name") for c in config.get("codecs", [])]
    index = [c.get("name") for c in config.get("index_codecs", [])]
    if inner not in (["bytes"], ["bytes", "blosc"]):
        raise refuse(f"inner codecs {inner}")
    if index not in (["bytes"], ["bytes", "crc32c"]) or config.get("index_location", "end") != "end":
        raise refuse(f"index codecs {index} at {config.get('index_location')}")
    endian = (config["codecs"][0].get("configuration") or {}).get("endian", "little")
    grid, keys = meta.get("chunk_grid", {}), meta.get("chunk_key_encoding", {})
    if grid.get("name") != "regular" or keys.get("name") != "default":
        raise refuse(f"chunk grid {grid.get('name')}, key encoding {keys.get('name')}")
    dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
    shape, shard, chunk = (tuple(meta["shape"]), tuple(grid["configuration"]["chunk_shape"]),
                           tuple(config["chunk_shape"]))
    sizes = [*shape, *shard, *chunk]
    if not all(type(n) is int for n in sizes) or min(shape, default=0) < 0 or min([*shard, *chunk], default=1) < 1:
        raise refuse(f"shape {shape}, shard {shard}, chunk {chunk} must be non-negative / positive integers")
    if dtype.kind not in "biuf" or len(shard) != len(shape) or len(chunk) != len(shape) or \
            any(s % c for s, c in zip(shard, chunk)):
        raise refuse(f"dtype {dtype}, shard {shard} not a multiple of chunk {chunk}")
    chunk_bytes = math.prod(chunk) * dtype.itemsize
    chunks = math.prod(-(-n // c) for n, c in zip(shape, chunk))
    if chunk_bytes > MAX_CHUNK_BYTES or chunks > MAX_CHUNKS:
        raise refuse(f"{chunks} chunks of {chunk_bytes} bytes (at most {MAX_CHUNKS} of {MAX_CHUNK_BYTES})")
    with np.errstate(all="ignore"):
        fill = np.array(meta.get("fill_value") or 0).astype(dtype)
    return ArrayLayout(name, shape, dtype, shard, chunk, fill,
                       blosc=inner[-1] == "blosc", index_crc=index[-1] == "crc32c",
                       separator=(keys.get("configuration") or {}).get("separator", "/"))


def normalize_region(region: Any, shape: Sequence[int], *, box: bool = False) -> tuple[slice, ...]:
    """``None``, ``...``, a slice or a tuple of slices (step 1) → one clipped slice per axis.

    The one region clipping of the reader and both loaders. As an index (default) bounds follow
    NumPy (a negative bound counts from the end); as a ``box`` (the loaders' regions: voxel
    coordinates that may reach outside the volume) every bound is clamped to ``[0, n]``.

    >>> normalize_region((slice(2, 99), Ellipsis), (10, 4, 4))
    (slice(2, 10, None), slice(0, 4, None), slice(0, 4, None))
    >>> region = (slice(-5, 10), slice(None))
    >>> normalize_region(region, (8, 3)), normalize_region(region, (8, 3), box=True)
    ((slice(3, 8, None), slice(0, 3, None)), (slice(0, 8, None), slice(0, 3, None)))
    """
    items = list(region) if isinstance(region, tuple) else [Ellipsis if region is None else region]
    if items.count(Ellipsis) > 1 or not all(isinstance(s, slice) or s is Ellipsis for s in items):
        raise IndexError(f"region {region!r}: use slices (step 1) and at most one '...'")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(shape) - len(items) + 1)
    items += [slice(None)] * (len(shape) - len(items))
    if len(items) != len(shape) or any(s.step not in (None, 1) for s in items):
        raise IndexError(f"region {region!r} does not fit shape {tuple(shape)} with step 1")
    if box:
        bounds = [(min(max(int(0 if s.start is None else s.start), 0), int(n)),
                   min(max(int(n if s.stop is None else s.stop), 0), int(n))) for s, n in zip(items, shape)]
    else:
        bounds = [s.indices(int(n))[:2] for s, n in zip(items, shape)]
    return tuple(slice(start, max(start, stop)) for start, stop in bounds)


def chunks_in(layout: ArrayLayout, region: Sequence[slice]) -> list[tuple[int, ...]]:
    """Grid coordinates of the inner chunks a (normalized) region intersects, C order.

    >>> layout = ArrayLayout("a", (100, 100), np.dtype("<f2"), (128, 128), (64, 64), 0, True, True)
    >>> chunks_in(layout, (slice(10, 70), slice(0, 5)))
    [(0, 0), (1, 0)]
    """
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) if s.stop > s.start else range(0)
              for s, c in zip(region, layout.chunk_shape)]
    return list(itertools.product(*ranges))


OpenShard = Callable[[str], Any]  # shard key -> its bytes (memoryview-like), or None if it does not exist


class ShardedArray:
    """A read-only stored array; ``array[region]`` decodes only the chunks inside ``region``.

    ``open_shard(key)`` returns a shard's bytes as a buffer that slices without copying (a
    ``memoryview`` of an ``mmap`` or of a blob) or ``None`` for a shard that does not exist.
    Use :func:`open_array` (a folder) or :func:`openmind_prep.shards.zshard.decode_array` (a blob).
    Shards and their indexes are kept open for the life of the object.
    """

    def __init__(self, layout: ArrayLayout, open_shard: OpenShard) -> None:
        self.layout, self.open_shard = layout, open_shard
        self._shards: dict[tuple[int, ...], tuple[Any, np.ndarray] | None] = {}
        self._per_shard = layout.per_shard

    shape = property(lambda self: self.layout.shape)
    dtype = property(lambda self: self.layout.dtype.newbyteorder("="))
    ndim = property(lambda self: len(self.layout.shape))

    def __getitem__(self, region: Any) -> np.ndarray:
        """NumPy-style basic indexing: slices (step 1), ``...`` and integers (which drop their axis)."""
        items = region if isinstance(region, tuple) else (region,)
        if not any(isinstance(i, (int, np.integer)) for i in items):
            return self.read(region)
        dims = [a for a, i in enumerate(items) if i is not Ellipsis]
        axis_of = dict(zip(dims, dims)) if Ellipsis not in items else {
            a: (a if a < items.index(Ellipsis) else a - len(items) + self.ndim) for a in dims}
        as_slices, drop = [], []
        for a, i in enumerate(items):
            if isinstance(i, (int, np.integer)):
                n = self.shape[axis_of[a]]
                if not -n <= i < n:
                    raise IndexError(f"index {i} out of range for axis {axis_of[a]} of size {n}")
                i = int(i) % n
                as_slices.append(slice(i, i + 1))
                drop.append(axis_of[a])
            else:
                as_slices.append(i)
        return self.read(tuple(as_slices)).squeeze(axis=tuple(drop))

    def shard(self, shard: tuple[int, ...]) -> tuple[Any, np.ndarray] | None:
        """(bytes, ``[chunks, 2]`` (offset, nbytes) per inner chunk in C order) of a shard; None if missing."""
        if shard not in self._shards:
            data = self.open_shard(self.layout.shard_key(shard))
            self._shards[shard] = None if data is None else (data, self._read_index(shard, data))
        return self._shards[shard]

    def _read_index(self, shard: tuple[int, ...], data: Any) -> np.ndarray:
        n = int(np.prod(self._per_shard))
        size = 16 * n + 4 * self.layout.index_crc
        if len(data) < size:
            raise ValueError(f"{self.layout.name}: shard {shard} is shorter than its index ({len(data)} bytes)")
        raw = data[len(data) - size:]
        if self.layout.index_crc:
            from numcodecs import CRC32C

            try:
                raw = CRC32C().decode(raw)
            except RuntimeError as err:
                raise ValueError(f"{self.layout.name}: shard {shard} index: {err}") from None
        index = np.frombuffer(raw, "<u8").reshape(n, 2)
        written = index[:, 0] != _EMPTY
        if (index[written].sum(1) > len(data) - size).any():
            raise ValueError(f"{self.layout.name}: shard {shard} index points past its data (truncated?)")
        return index

    def read(self, region: Any = Ellipsis, out: np.ndarray | None = None) -> np.ndarray:
        """The values of ``region`` as a new C-contiguous array (or written into ``out``)."""
        layout = self.layout
        region = normalize_region(region, layout.shape)
        shape = tuple(s.stop - s.start for s in region)
        if out is None:
            out = np.empty(shape, self.dtype)
        elif out.shape != shape:
            raise ValueError(f"{layout.name}: out has shape {out.shape}, region needs {shape}")
        scratch = np.empty(layout.chunk_shape, layout.dtype)  # per read: open arrays hold no buffers
        for chunk in chunks_in(layout, region):
            lo = [c * n for c, n in zip(chunk, layout.chunk_shape)]
            src = tuple(slice(max(s.start, a) - a, min(s.stop, a + n) - a)
                        for s, a, n in zip(region, lo, layout.chunk_shape))
            dst = tuple(slice(a + d.start - s.start, a + d.stop - s.start) for s, a, d in zip(region, lo, src))
            decoded = self._chunk(chunk, scratch)
            out[dst] = layout.fill_value if decoded is None else decoded[src]
        return out

    def _chunk(self, chunk: tuple[int, ...], scratch: np.ndarray) -> np.ndarray | None:
        per_shard = self._per_shard
        opened = self.shard(tuple(c // p for c, p in zip(chunk, per_shard)))
        if opened is None:
            return None
        data, index = opened
        local = 0
        for c, p in zip(chunk, per_shard):
            local = local * p + c % p
        offset, nbytes = int(index[local, 0]), int(index[local, 1])
        if offset == _EMPTY:
            return None
        what = f"{self.layout.name}: chunk {chunk}"
        if not self.layout.blosc:
            if nbytes != scratch.nbytes:
                raise ValueError(f"{what} has {nbytes} bytes, expected {scratch.nbytes}")
            return np.frombuffer(data[offset:offset + nbytes], self.layout.dtype).reshape(self.layout.chunk_shape)
        _decompress(data[offset:offset + nbytes], scratch, what)
        return scratch


def _decompress(data: Any, dest: np.ndarray, what: str) -> None:
    """Blosc-decompress ``data`` into ``dest`` with one thread, checking the header's sizes first."""
    import numcodecs.blosc as blosc

    view = memoryview(data)
    if len(view) < _BLOSC_HEADER.size:
        raise ValueError(f"{what}: not a blosc buffer ({len(view)} bytes)")
    _, _, _, _, nbytes, _, cbytes = _BLOSC_HEADER.unpack_from(view)
    if nbytes != dest.nbytes or cbytes != len(view):
        raise ValueError(f"{what}: blosc header says {nbytes} bytes from {cbytes}, expected {dest.nbytes} "
                         f"from {len(view)}")
    previous, blosc.use_threads = blosc.use_threads, False  # blosc_decompress_ctx, 1 thread
    try:
        blosc.decompress(view, dest)
    except RuntimeError as err:  # numcodecs: "error during blosc decompression: -1"
        raise ValueError(f"{what}: {err}") from None
    finally:
        blosc.use_threads = previous


def _map_shard(folder: Path) -> OpenShard:
    from openmind_prep.core.paths import special_file

    def open_shard(key: str) -> memoryview | None:
        try:  # O_NONBLOCK: a FIFO put in place of a shard must not block the reader (it is refused below)
            fd = os.open(folder / key, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{folder / key}: not a regular file ({special_file(info.st_mode) or 'a directory'}); "
                                 "refused")
            if info.st_size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))

    return open_shard


def open_array(folder: str | Path) -> ShardedArray:
    """Open a stored array folder (``zarr.json`` + ``c/...`` shard files) for region reads.

    >>> import tempfile
    >>> from openmind_prep.store.store import Store
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
    >>> _ = s.write_case("a", {"image": np.arange(1000, dtype=np.float16).reshape(10, 10, 10)}, {}, chunks=4)
    >>> open_array(s.root / "a" / "image")[2:3, 5:6, 7:9]
    array([[[257., 258.]]], dtype=float16)
    """
    from openmind_prep.core.paths import not_a_regular_file

    folder = Path(folder)
    try:
        problem = not_a_regular_file(folder / "zarr.json")  # stat first: a FIFO is never opened
        meta = None if problem else json.loads((folder / "zarr.json").read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: not a stored array (no zarr.json)") from None
    if problem:
        raise ValueError(f"{folder / 'zarr.json'}: {problem}; refused")
    return ShardedArray(parse_layout(meta, str(folder)), _map_shard(folder))
