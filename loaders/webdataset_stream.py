"""Streaming loader over the tar shards written by :mod:`openmind_prep.shards`.

The pipeline is a chain of plain generator stages, each testable with a Python list::

    shard urls ─ shuffle_shards (seeded, per epoch) ─ split_by_node ─ split_by_worker
      (or resample_shards: infinite, with replacement, for multi-node training)
    ─ open_shards (fsspec: local paths, hf://, s3://; optional sha256 check) ─ expand_tars
    ─ shuffle_samples (bounded buffer of still-compressed samples)
    ─ decode_samples (zshard → tensors, optional random region: only its chunks are decoded)

:class:`WebDatasetStream` assembles them inside each DataLoader worker and yields the same sample
dict as :class:`loaders.zarr_dataset.ZarrVolumeDataset`. Node rank / world size come from
``torch.distributed`` when it is initialised, else from explicit arguments (default 0 / 1); worker
id / count from ``torch.utils.data.get_worker_info()`` or explicit arguments. Without resampling,
every shard goes to exactly one (node, worker) per epoch, so every sample appears exactly once;
too few shards for the ranks × workers raises instead of leaving some idle.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import tarfile
import warnings
import zlib
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from loaders.ranks import node_rank, worker_rank
from loaders.regions import random_region, read_sample
from openmind_prep.metadata import ARRAYS

_TAR_BUFSIZE = 1 << 20  # tarfile's stream default (10 KiB) splits a volume into hundreds of reads + a join


class CorruptShardError(ValueError):
    """A shard (or a sample inside it) cannot be read; the message names the shard."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: corrupt shard ({reason})")
        self.url, self.reason = url, reason


def read_index(source: str) -> tuple[list[str], dict[str, dict]]:
    """Shard urls and per-shard records (samples, bytes, sha256) from an index.json or its folder.

    Relative shard names resolve against the index's location (local path or fsspec URL).
    """
    import fsspec

    url = source if source.endswith(".json") else source.rstrip("/") + "/index.json"
    with fsspec.open(url, "rt") as f:
        index = json.load(f)
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    urls, records = [], {}
    for shard in index["shards"]:
        full = shard["url"] if "://" in shard["url"] else f"{base}/{shard['url']}"
        urls.append(full)
        records[full] = shard
    return urls, records


def shuffle_shards(urls: Sequence[str], seed: int, epoch: int = 0) -> list[str]:
    """The shard list in a seeded order that changes each epoch (the same on every node).

    >>> shuffle_shards(["a", "b", "c", "d"], seed=0) == shuffle_shards(["a", "b", "c", "d"], seed=0)
    True
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(urls))
    return [urls[i] for i in order]


def split_by_node(urls: Sequence[str], rank: int | None = None, world_size: int | None = None) -> Iterator[str]:
    """Every ``world_size``-th shard, starting at this node's rank.

    >>> list(split_by_node(["a", "b", "c", "d", "e"], rank=1, world_size=2))
    ['b', 'd']
    """
    rank, world_size = node_rank(rank, world_size)
    yield from list(urls)[rank::world_size]


def split_by_worker(urls: Iterable[str], worker: int | None = None, num_workers: int | None = None) -> Iterator[str]:
    """Every ``num_workers``-th shard of this node's share, starting at this worker's id.

    >>> list(split_by_worker(["b", "d", "f"], worker=0, num_workers=2))
    ['b', 'f']
    """
    worker, num_workers = worker_rank(worker, num_workers)
    yield from list(urls)[worker::num_workers]


def resample_shards(urls: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Infinite stream of shards drawn with replacement (seed the rng per node and worker).

    >>> from itertools import islice
    >>> list(islice(resample_shards(["a", "b"], np.random.default_rng(0)), 5))
    ['b', 'b', 'b', 'a', 'a']
    """
    if not urls:
        raise ValueError("resample_shards: empty shard list")
    while True:
        yield urls[int(rng.integers(len(urls)))]


def open_shards(urls: Iterable[str], records: dict[str, dict] | None = None, *, verify: bool = False,
                skip_corrupt: bool = False) -> Iterator[tuple[str, Any]]:
    """(url, binary stream) per shard, through fsspec.

    With ``verify``, the whole shard is read into memory and checked against the index's sha256
    before any of its samples is used (memory: one shard per worker).
    """
    import fsspec

    for url in urls:
        try:
            if verify:
                expected = ((records or {}).get(url) or {}).get("sha256")
                if not expected:
                    raise CorruptShardError(url, "no sha256 in the index to verify against")
                with fsspec.open(url, "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != expected:
                    raise CorruptShardError(url, "sha256 differs from the index")
                yield url, io.BytesIO(data)
                continue
            with fsspec.open(url, "rb") as f:
                yield url, f
        except (CorruptShardError, FileNotFoundError) as err:
            error = err if isinstance(err, CorruptShardError) else CorruptShardError(url, f"missing: {err}")
            if not skip_corrupt:
                raise error from None
            warnings.warn(f"skipping {error}", stacklevel=2)


def _split_name(name: str) -> tuple[str, str]:
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext


def expand_tars(streams: Iterable[tuple[str, Any]], records: dict[str, dict] | None = None, *,
                skip_corrupt: bool = False) -> Iterator[dict[str, Any]]:
    """Group consecutive tar members by key into raw samples ``{"__key__", "__url__", ext: bytes}``.

    A shard that is a local file is memory-mapped and its ``zshard`` members are ``memoryview``
    slices of the map (no copy; the region reader decodes straight from them); other seekable streams are read
    member by member, non-seekable ones in tarfile's stream mode.

    A damaged tar (bad header, truncated member, fewer samples than the index says, a sample
    without ``json`` or ``image.zshard``) raises :class:`CorruptShardError` naming the shard, or
    with ``skip_corrupt`` warns and moves on to the next shard.
    """
    from openmind_prep.shards import EXTENSION, untar_key

    for url, stream in streams:
        count = 0
        try:
            current: dict[str, Any] = {}
            seekable = getattr(stream, "seekable", lambda: False)()  # local files, fsspec files: read members directly
            mapped = _map_file(stream) if seekable else None
            with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|", bufsize=_TAR_BUFSIZE) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    stem, ext = _split_name(info.name)
                    key = untar_key(stem)
                    if current and current["__key__"] != key:
                        yield _complete(current)
                        count, current = count + 1, {}
                    current.setdefault("__key__", key)
                    current["__url__"] = url
                    if mapped is None:
                        current[ext] = tar.extractfile(info).read()
                    elif info.offset_data + info.size > len(mapped):
                        raise tarfile.ReadError(f"unexpected end of data in {info.name}")
                    else:
                        data = mapped[info.offset_data:info.offset_data + info.size]
                        current[ext] = data if ext.endswith(EXTENSION) else bytes(data)
            if current:
                yield _complete(current)
                count += 1
            expected = ((records or {}).get(url) or {}).get("samples")
            if expected is not None and count != expected:
                raise CorruptShardError(url, f"{count} samples, index says {expected}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            error = CorruptShardError(url, f"{type(err).__name__}: {err} after {count} samples")
            if not skip_corrupt:
                raise error from err
            warnings.warn(f"skipping rest of {error}", stacklevel=2)
        except CorruptShardError as err:
            if not skip_corrupt:
                raise
            warnings.warn(f"skipping rest of {err}", stacklevel=2)


def _map_file(stream: Any) -> memoryview | None:
    """Read-only memory map of a stream backed by a local file (None for anything else)."""
    try:
        fd = stream.fileno()
        if os.fstat(fd).st_size == 0:
            return None
        return memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _complete(sample: dict[str, Any]) -> dict[str, Any]:
    missing = [ext for ext in ("json", "image.zshard") if ext not in sample]
    if missing:
        raise CorruptShardError(sample["__url__"], f"sample {sample['__key__']!r} lacks {missing}")
    return sample


def decode_samples(raw: Iterable[dict[str, Any]], *, region_size: int | Sequence[int] | None = None,
                   rng: np.random.Generator | None = None, skip_corrupt: bool = False,
                   masks: bool = True) -> Iterator[dict]:
    """Raw samples → sample dicts (see :mod:`loaders.zarr_dataset`), optionally a random region.

    Only the chunks inside the region are decompressed (:mod:`openmind_prep.region_read`, straight
    from the member's bytes); ``masks=False`` leaves the masks undecoded (``None`` in the dict).
    """
    from openmind_prep.shards import decode_array

    rng = rng if rng is not None else np.random.default_rng(0)
    names = ARRAYS if masks else ARRAYS[:1]
    for sample in raw:
        url, key = sample["__url__"], sample["__key__"]
        try:
            meta = json.loads(sample["json"])
            arrays = {name: decode_array(sample[f"{name}.zshard"], f"{url}:{key}.{name}.zshard")
                      for name in names if f"{name}.zshard" in sample}
            shape = arrays["image"].shape
            region = None if region_size is None else random_region(shape, region_size, rng)
            yield read_sample(key, arrays, region, meta)
        except Exception as err:  # damaged blob or chunk: name shard and sample
            error = CorruptShardError(url, f"sample {key!r}: {type(err).__name__}: {err}")
            if not skip_corrupt:
                raise error from err
            warnings.warn(f"skipping {error}", stacklevel=2)


def shuffle_samples(samples: Iterable[Any], bufsize: int, rng: np.random.Generator) -> Iterator[Any]:
    """Bounded shuffle: keep ``bufsize`` samples, emit a random one as each new one arrives.

    >>> sorted(shuffle_samples(range(10), 4, np.random.default_rng(0))) == list(range(10))
    True
    """
    if bufsize <= 1:
        yield from samples
        return
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < bufsize:
            buffer.append(sample)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class WebDatasetStream(torch.utils.data.IterableDataset):
    """The assembled pipeline; iterate it directly or through a ``DataLoader`` (any ``num_workers``).

    Args:
        source: ``index.json`` (or its folder), local or fsspec URL (``hf://datasets/...``,
            ``s3://...``); or a list of shard URLs.
        seed: seeds shard order, sample shuffle, regions and resampling (with epoch, rank, worker).
        shuffle_buffer: compressed samples held for the bounded shuffle (0: keep shard order).
        region_size: read only a random region of this many voxels per axis (None: whole volume).
        resampled: draw shards with replacement, forever (multi-node training); pair with
            ``samples_per_worker`` to end an epoch.
        rank, world_size, worker, num_workers: explicit split (default: torch.distributed /
            the DataLoader worker info).
        skip_corrupt: warn and skip a damaged shard / sample instead of raising.
        verify: check each shard's sha256 against the index before use (buffers one shard).
        masks: also decode ``anon_mask`` / ``anat_mask`` where a sample has them.

    >>> stream = WebDatasetStream(["a.tar", "b.tar"], rank=0, world_size=1)
    >>> stream.shards(worker=1, num_workers=2)
    ['b.tar']
    """

    def __init__(self, source: str | Sequence[str], *, seed: int = 0, shuffle_buffer: int = 8,
                 region_size: int | Sequence[int] | None = None, resampled: bool = False,
                 samples_per_worker: int | None = None, rank: int | None = None, world_size: int | None = None,
                 worker: int | None = None, num_workers: int | None = None, skip_corrupt: bool = False,
                 verify: bool = False, masks: bool = True) -> None:
        if isinstance(source, str):
            self.urls, self.records = read_index(source)
        else:
            self.urls, self.records = list(source), {}
        self.seed, self.shuffle_buffer, self.region_size = seed, shuffle_buffer, region_size
        self.resampled, self.samples_per_worker = resampled, samples_per_worker
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        self.skip_corrupt, self.verify, self.masks = skip_corrupt, verify, masks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change shard order, shuffle and regions for the next pass (call before iterating)."""
        self.epoch = epoch

    def shards(self, worker: int | None = None, num_workers: int | None = None) -> list[str]:
        """This (node, worker)'s shards for the current epoch (non-resampled mode)."""
        rank, world = node_rank(self.rank, self.world_size)
        worker, workers = worker_rank(self.worker if worker is None else worker,
                                      self.num_workers if num_workers is None else num_workers)
        if len(self.urls) < world * workers:
            raise ValueError(f"{len(self.urls)} shards cannot feed {world} nodes x {workers} workers: "
                             "write smaller shards (--shard-size) or use resampled=True")
        ordered = shuffle_shards(self.urls, self.seed, self.epoch)
        return list(split_by_worker(split_by_node(ordered, rank, world), worker, workers))

    def __iter__(self) -> Iterator[dict]:
        rank, world = node_rank(self.rank, self.world_size)
        worker, workers = worker_rank(self.worker, self.num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        urls: Iterable[str] = resample_shards(self.urls, rng) if self.resampled else self.shards(worker, workers)
        streams = open_shards(urls, self.records, verify=self.verify, skip_corrupt=self.skip_corrupt)
        raw = expand_tars(streams, self.records, skip_corrupt=self.skip_corrupt)
        raw = shuffle_samples(raw, self.shuffle_buffer, rng)  # compressed samples: small buffer
        samples = decode_samples(raw, region_size=self.region_size, rng=rng, skip_corrupt=self.skip_corrupt,
                                 masks=self.masks)
        for count, sample in enumerate(samples):
            if self.samples_per_worker is not None and count >= self.samples_per_worker:
                return
            yield sample
