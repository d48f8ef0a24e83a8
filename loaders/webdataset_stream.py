"""Streaming loader over the tar shards of :mod:`openmind_prep.shards.writer`, on webdataset's pipeline.

One ``wds.DataPipeline`` per epoch and DataLoader worker; the library's stages where it has them,
ours (plain generators, each testable with a list) where it lacks something::

    wds.SimpleShardList (seeded per epoch, the same order on every node)
      or wds.ResampledShards (with replacement, deterministic per seed, epoch, rank and worker)
    ─ wds.split_by_node ─ wds.split_by_worker   (explicit rank / worker: the same islice)
    ─ open_shards   ours: fsspec URLs (local, hf://, s3://, memory://), optional sha256 check
    ─ tar_members   ours: local tars memory-mapped (zshard members are slices of the map, no copy),
                    member names checked (relative, no ``..``), exact sample count per shard
    ─ wds.tariterators.group_by_keys            (members → samples)
    ─ wds.shuffle   bounded buffer of still-compressed samples, seeded
    ─ decode_samples ours: zshard → tensors, optionally a random region (only its chunks decoded)

:class:`WebDatasetStream` yields the same sample dict as :class:`loaders.zarr_dataset.ZarrVolumeDataset`.
Node rank / world size and worker id / count come from :mod:`loaders.ranks` (webdataset's own
lookup: ``RANK``/``WORLD_SIZE``, ``torch.distributed``, the DataLoader worker info) unless given.
Without resampling every shard goes to exactly one (node, worker) per epoch, so every sample
appears exactly once; too few shards for the ranks × workers raises instead of leaving some idle.
Plain ``wds.WebDataset(urls).decode(openmind_prep.shards.zshard.decode_zshard)`` also reads these shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import random
import tarfile
import warnings
import zlib
from functools import partial
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys
from webdataset.utils import make_seed

from loaders.ranks import node_rank, worker_rank
from loaders.regions import random_region, read_sample
from openmind_prep.store.schema import IMAGE, LABEL, MASK_NAMES
from openmind_prep.store.zarr_write import array_checksum
from openmind_prep.shards.zshard import EXTENSION, check_member_name, decode_array, untar_key

_TAR_BUFSIZE = 1 << 20  # tarfile's stream default (10 KiB) splits a volume into hundreds of reads + a join
_REQUIRED = ("json", f"image.{EXTENSION}")


class CorruptShardError(ValueError):
    """A shard (or a sample inside it) cannot be read; the message names the shard."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: corrupt shard ({reason})")
        self.url, self.reason = url, reason


def read_index(source: str) -> tuple[list[str], dict[str, dict]]:
    """Shard urls and per-shard records (samples, bytes, sha256) from an index.json or its folder.

    Relative shard names resolve against the index's location (local path or fsspec URL) and must
    stay inside it.
    """
    import fsspec

    url = source if source.endswith(".json") else source.rstrip("/") + "/index.json"
    with fsspec.open(url, "rt") as f:
        index = json.load(f)
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    urls, records = [], {}
    for shard in index["shards"]:
        if "://" in shard["url"]:
            full = shard["url"]
        else:
            full = f"{base}/{check_member_name(shard['url'], f'{url}: shard')}"
        urls.append(full)
        records[full] = shard
    return urls, records


def split_by_node(src: Iterable, rank: int | None = None, world_size: int | None = None) -> Iterator:
    """``wds.split_by_node``, or every ``world_size``-th item from ``rank`` when given.

    >>> list(split_by_node(["a", "b", "c", "d", "e"], rank=1, world_size=2))
    ['b', 'd']
    """
    if rank is None and world_size is None:
        return wds.split_by_node(src)
    rank, world_size = node_rank(rank, world_size)
    return islice(src, rank, None, world_size)


def split_by_worker(src: Iterable, worker: int | None = None, num_workers: int | None = None) -> Iterator:
    """``wds.split_by_worker``, or every ``num_workers``-th item from ``worker`` when given.

    >>> list(split_by_worker(["b", "d", "f"], worker=0, num_workers=2))
    ['b', 'f']
    """
    if worker is None and num_workers is None:
        return wds.split_by_worker(src)
    worker, num_workers = worker_rank(worker, num_workers)
    return islice(src, worker, None, num_workers)


def open_shards(sources: Iterable[dict], records: dict[str, dict] | None = None, *, verify: bool = False,
                skip_corrupt: bool = False) -> Iterator[dict]:
    """``{"url"}`` → ``{"url", "stream"}`` per shard through fsspec (as ``wds.url_opener``, plus checks).

    With ``verify``, the whole shard is read into memory and checked against the index's sha256
    before any of its samples is used (memory: one shard per worker).
    """
    import fsspec

    for source in sources:
        url = source["url"]
        try:
            if verify:
                expected = ((records or {}).get(url) or {}).get("sha256")
                if not expected:
                    raise CorruptShardError(url, "no sha256 in the index to verify against")
                with fsspec.open(url, "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != expected:
                    raise CorruptShardError(url, "sha256 differs from the index")
                yield {**source, "stream": io.BytesIO(data)}
                continue
            with fsspec.open(url, "rb") as f:
                yield {**source, "stream": f}
        except (CorruptShardError, FileNotFoundError) as err:
            error = err if isinstance(err, CorruptShardError) else CorruptShardError(url, f"missing: {err}")
            if not skip_corrupt:
                raise error from None
            warnings.warn(f"skipping {error}", stacklevel=2)


def tar_members(sources: Iterable[dict], records: dict[str, dict] | None = None, *,
                skip_corrupt: bool = False) -> Iterator[dict]:
    """Opened shards → ``{"fname", "data", "__url__"}`` per member and ``{}`` after each shard, for
    ``group_by_keys`` (as ``wds.tariterators.tar_file_expander``).

    A local file is memory-mapped and its ``zshard`` members are ``memoryview`` slices of the map
    (the region reader decodes straight from them); other seekable streams are read member by
    member, non-seekable ones in tarfile's stream mode. Members are passed on one whole sample at
    a time, so a damaged shard never leaves half a sample behind. A bad header, a truncated
    member, an absolute or ``..`` member name, a repeated member or a sample count that differs
    from the index raises :class:`CorruptShardError` naming the shard (``skip_corrupt``: warns and
    goes on with the next shard).
    """
    for source in sources:
        url, stream, count = source["url"], source["stream"], 0
        try:
            pending: list[dict] = []
            for member in _members(url, stream):
                if pending and member["stem"] != pending[0]["stem"]:
                    yield from pending
                    count, pending = count + 1, []
                check_member_name(member["fname"])
                if member["stem"] == member["fname"]:
                    raise tarfile.ReadError(f"member {member['fname']!r} has no extension")
                if any(p["fname"] == member["fname"] for p in pending):
                    raise CorruptShardError(url, f"member {member['fname']!r} appears twice")
                pending.append(member)
            yield from pending
            count += bool(pending)
            expected = ((records or {}).get(url) or {}).get("samples")
            if expected is not None and count != expected:
                raise CorruptShardError(url, f"{count} samples, index says {expected}")
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as err:
            error = err if isinstance(err, CorruptShardError) else \
                CorruptShardError(url, f"{type(err).__name__}: {err} after {count} samples")
            if not skip_corrupt:
                raise error from err
            warnings.warn(f"skipping rest of {error}", stacklevel=2)
        yield {}  # end of shard (wds's eof marker): a shard drawn twice in a row never merges samples


def _members(url: str, stream: Any) -> Iterator[dict]:
    seekable = getattr(stream, "seekable", lambda: False)()  # local files, fsspec files: read members directly
    mapped = _map_file(stream) if seekable else None
    with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|", bufsize=_TAR_BUFSIZE) as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name  # checked by tar_members once the sample before it is complete
            ext = name.rpartition("/")[2].partition(".")[2]
            if mapped is None:
                data = tar.extractfile(info).read()
            elif info.offset_data + info.size > len(mapped):
                raise tarfile.ReadError(f"unexpected end of data in {name}")
            else:
                data = mapped[info.offset_data:info.offset_data + info.size]
                data = data if ext.endswith(EXTENSION) else bytes(data)
            stem = name[:len(name) - len(ext) - 1] if ext else name
            yield {"fname": name, "data": data, "__url__": url, "stem": stem}


def _map_file(stream: Any) -> memoryview | None:
    """Read-only memory map of a stream backed by a local file (None for anything else)."""
    try:
        fd = stream.fileno()
        if os.fstat(fd).st_size == 0:
            return None
        return memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _index_checksums(records: dict[str, dict] | None, url: str) -> dict[str, dict]:
    """``key → {array: checksum}`` of one shard from the index (empty when the index has none)."""
    record = (records or {}).get(url) or {}
    keys, sums = record.get("keys") or [], record.get("checksums") or []
    return {k: c for k, c in zip(keys, sums) if isinstance(c, dict)} if len(keys) == len(sums) else {}


def _checked(arrays: dict[str, Any], meta: dict, expected: dict[str, str] | None, what: str) -> dict[str, Any]:
    """``arrays`` after the sample's checks: each shape as its manifest row says; with ``expected`` (the
    index's checksums, ``verify``), each array decoded whole and equal to its checksum (the decoded
    arrays are returned, to cut the region from)."""
    shape = tuple(int(n) for n in meta.get("shape") or ())
    for name, array in arrays.items():
        if shape and tuple(array.shape) != shape:
            raise ValueError(f"{what}.{name}: shape {tuple(array.shape)}, its manifest row says {shape}")
    if expected is None:
        return arrays
    decoded = {name: array[...] for name, array in arrays.items()}
    for name, values in decoded.items():
        actual = array_checksum(values)
        if actual != expected.get(name):
            raise ValueError(f"{what}.{name}: checksum {actual} != index {expected.get(name)}")
    return decoded


def decode_samples(raw: Iterable[dict[str, Any]], *, region_size: int | Sequence[int] | None = None,
                   rng: np.random.Generator | None = None, skip_corrupt: bool = False,
                   masks: bool = True, labels: bool = True, records: dict[str, dict] | None = None,
                   verify: bool = False) -> Iterator[dict]:
    """Grouped samples → sample dicts (see :mod:`loaders.zarr_dataset`), optionally a random region.

    Only the chunks inside the region are decompressed (:mod:`openmind_prep.store.region_read`, straight
    from the member's bytes); ``masks=False`` / ``labels=False`` leave the masks / the label map
    undecoded (``None`` in the dict). Each array's shape must be its manifest row's; with ``verify``,
    each array is decoded whole and compared with the checksum the index (``records``) holds for that
    sample (a sample the index has no checksum for is refused).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    names = [IMAGE, *(MASK_NAMES if masks else ()), *((LABEL,) if labels else ())]
    for sample in raw:
        url, key = sample["__url__"], sample["__key__"]
        try:
            missing = [ext for ext in _REQUIRED if ext not in sample]
            if missing:
                raise ValueError(f"lacks {missing}")
            key = untar_key(key)
            meta = json.loads(sample["json"])
            arrays = {name: decode_array(sample[f"{name}.{EXTENSION}"], f"{url}:{key}.{name}.{EXTENSION}")
                      for name in names if f"{name}.{EXTENSION}" in sample}
            expected = None
            if verify:
                expected = _index_checksums(records, url).get(key)
                if expected is None:
                    raise ValueError("the index records no checksum for it (shards written before shards knew "
                                     "their store: run openmind-prep shard again)")
            arrays = _checked(arrays, meta, expected, f"{url}:{key}")
            region = None if region_size is None else random_region(arrays["image"].shape, region_size, rng)
            yield read_sample(key, arrays, region, meta)
        except Exception as err:  # damaged blob or chunk: name shard and sample
            error = CorruptShardError(url, f"sample {key!r}: {type(err).__name__}: {err}")
            if not skip_corrupt:
                raise error from err
            warnings.warn(f"skipping {error}", stacklevel=2)


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
        rank, world_size, worker, num_workers: explicit split (default: webdataset's lookup).
        skip_corrupt: warn and skip a damaged shard / sample instead of raising.
        verify: check each shard's sha256 and each sample's checksums against the index before use
            (buffers one shard, decodes every sample whole).
        masks: also decode ``anon_mask`` / ``anat_mask`` where a sample has them.
        labels: also decode the ``label`` map where a sample has one.

    >>> stream = WebDatasetStream(["a.tar", "b.tar"], rank=0, world_size=1)
    >>> stream.shards(worker=1, num_workers=2)
    ['b.tar']
    """

    def __init__(self, source: str | Sequence[str], *, seed: int = 0, shuffle_buffer: int = 8,
                 region_size: int | Sequence[int] | None = None, resampled: bool = False,
                 samples_per_worker: int | None = None, rank: int | None = None, world_size: int | None = None,
                 worker: int | None = None, num_workers: int | None = None, skip_corrupt: bool = False,
                 verify: bool = False, masks: bool = True, labels: bool = True) -> None:
        if isinstance(source, str):
            self.urls, self.records = read_index(source)
        else:
            self.urls, self.records = list(source), {}
        self.seed, self.shuffle_buffer, self.region_size = seed, shuffle_buffer, region_size
        self.resampled, self.samples_per_worker = resampled, samples_per_worker
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        self.skip_corrupt, self.verify, self.masks, self.labels = skip_corrupt, verify, masks, labels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change shard order, shuffle and regions for the next pass (call before iterating)."""
        self.epoch = epoch

    def _shard_stages(self, worker_arg: int | None, num_workers: int | None) -> list:
        rank, world = node_rank(self.rank, self.world_size)
        worker, workers = worker_rank(worker_arg, num_workers)
        if self.resampled:
            return [wds.ResampledShards(self.urls, seed=self.seed, deterministic=True,
                                        worker_seed=lambda: make_seed(rank, worker, self.epoch))]
        if len(self.urls) < world * workers:
            raise ValueError(f"{len(self.urls)} shards cannot feed {world} nodes x {workers} workers: "
                             "write smaller shards (--shard-size) or use resampled=True")
        return [wds.SimpleShardList(self.urls, seed=make_seed(self.seed, self.epoch)),
                partial(split_by_node, rank=self.rank, world_size=self.world_size),
                partial(split_by_worker, worker=worker_arg, num_workers=num_workers)]

    def shards(self, worker: int | None = None, num_workers: int | None = None) -> list[str]:
        """This (node, worker)'s shards for the current epoch (non-resampled mode)."""
        worker = self.worker if worker is None else worker
        num_workers = self.num_workers if num_workers is None else num_workers
        return [s["url"] for s in wds.DataPipeline(*self._shard_stages(worker, num_workers))]

    def pipeline(self) -> wds.DataPipeline:
        """This (node, worker)'s ``wds.DataPipeline`` for the current epoch."""
        rank, _ = node_rank(self.rank, self.world_size)
        worker, _ = worker_rank(self.worker, self.num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        shuffle = None
        if self.shuffle_buffer > 1:
            shuffle = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                  rng=random.Random(make_seed(self.seed, self.epoch, rank, worker)))
        return wds.DataPipeline(
            *self._shard_stages(self.worker, self.num_workers),
            partial(open_shards, records=self.records, verify=self.verify, skip_corrupt=self.skip_corrupt),
            partial(tar_members, records=self.records, skip_corrupt=self.skip_corrupt),
            group_by_keys, shuffle,
            partial(decode_samples, region_size=self.region_size, rng=rng, skip_corrupt=self.skip_corrupt,
                    masks=self.masks, labels=self.labels, records=self.records, verify=self.verify))

    def __iter__(self) -> Iterator[dict]:
        return islice(self.pipeline(), self.samples_per_worker)
