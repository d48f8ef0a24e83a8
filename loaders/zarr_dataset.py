"""Map-style dataset over a preprocessed Zarr store: whole volumes or only the region a sampler needs.

Both loaders (this one and :mod:`loaders.webdataset_stream`) yield the same sample dict::

    {"key": "<image group key>",
     "image": Tensor[1, z, y, x]  (stored dtype, float16 or float32, zyx as on disk),
     "anon_mask": Tensor[1, z, y, x] uint8 or None, "anat_mask": same or None,
     "label": Tensor[1, z, y, x] (the stored integer dtype) or None,
     "meta": manifest row + {"region": [[z0, z1], [y0, y1], [x0, x1]], "volume_shape": [z, y, x]}}

A region is a tuple of three ``slice`` objects in zyx voxels (half-open, clipped to the volume);
reading it decodes only the inner chunks (64³) it intersects, through the one region reader both
loaders share (:mod:`openmind_prep.store.region_read`: the shard index, then just those chunks' bytes,
one blosc thread, no event loop). The dataset is fork-safe: the parent process only reads the
manifest (pyarrow); arrays are opened lazily inside each worker process and re-opened after a
fork, and the reader starts no threads. Tensors leave DataLoader workers through shared memory,
not pickled NumPy arrays.

Damaged images are never returned (:mod:`openmind_prep.store.integrity`): rows without an array path
or checksum are refused when the dataset is built; an array whose folder holds a FIFO or a device,
whose path is not the image's own or whose ``zarr.json`` shape differs from the manifest's is refused
when it is opened; and (``verify=True``, the default) the first time an image is read, the
whole image is decoded and compared with its manifest checksum (the region is then cut from that
decode); the flags of checked images live in shared memory, so the DataLoader workers of one
dataset check each image once between them (a plain pickle copies them). Each raises
:class:`~openmind_prep.store.integrity.DamagedImage` (a ``ValueError``, one line naming the array and
the image): training stops with that line (``python -m trainers.cva``, exit 1).
``verify=False`` skips only the checksum (for a store verified just before, or to measure the reader).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from loaders.ranks import node_rank
from loaders.regions import Region, random_region, read_sample
from openmind_prep.store.schema import IMAGE, LABEL, MASK_NAMES, row_key

if TYPE_CHECKING:
    from openmind_prep.store.store import Store

_CACHE_SIZE = 256


class ZarrVolumeDataset(torch.utils.data.Dataset):
    """Random access to the ``ok`` images of a store; ``ds[i]`` or ``ds[i, region]``.

    Args:
        store: the store (a :class:`~openmind_prep.store.store.Store` or its folder); an array path of
            the manifest that leads out of it raises :class:`~openmind_prep.store.store.StoreError` when read.
        keys: only these image group keys (default: all ``ok`` rows, manifest order).
        masks: also read ``anon_mask`` / ``anat_mask`` where the image has them.
        labels: also read the ``label`` map where the image has one.
        verify: check each image's checksum the first time it is read (see above).

    >>> import tempfile
    >>> from openmind_prep.store import manifest; from openmind_prep.store.store import Store
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s").root
    >>> c = Store(s).write_case("ds1/a", {"image": np.arange(1000, dtype=np.float16).reshape(10, 10, 10)}, {})
    >>> _ = manifest.write_fragment(s, [{**manifest.empty_row("ds1/a.nii.gz"), "status": "ok",
    ...     "shape": [10, 10, 10], **c.columns()}])
    >>> ds = ZarrVolumeDataset(s)
    >>> len(ds), ds[0]["image"].shape, ds[0, (slice(2, 4),) * 3]["image"].shape
    (1, torch.Size([1, 10, 10, 10]), torch.Size([1, 2, 2, 2]))
    """

    def __init__(self, store: str | Path | Store, keys: Sequence[str] | None = None, *, masks: bool = True,
                 labels: bool = True, verify: bool = True) -> None:
        from openmind_prep.store.integrity import DamagedImage, usable_rows
        from openmind_prep.store.store import Store

        self._store = Store.open(store)
        self.store = self._store.root
        rows, problems = usable_rows(self._store.ok_rows())
        if problems:
            more = f" (and {len(problems) - 1} more rows)" if len(problems) > 1 else ""
            raise DamagedImage(f"{self._store.root / 'manifest.parquet'}: {problems[0]}{more}")
        by_key = {row_key(r): r for r in rows}
        if keys is not None:
            missing = [k for k in keys if k not in by_key]
            if missing:
                raise KeyError(f"{self.store}: no 'ok' image with key(s) {missing[:5]}")
        self.keys = list(by_key) if keys is None else list(keys)
        self.rows = [by_key[k] for k in self.keys]
        self.masks, self.labels, self.verify = masks, labels, verify
        self._names = [IMAGE, *(MASK_NAMES if masks else ()), *((LABEL,) if labels else ())]
        self._pid: int | None = None
        self._open: dict[int, dict[str, Any]] = {}
        # images whose checksum has been checked, in shared memory: DataLoader workers (spawned with
        # this dataset) mark and see the same flags, so a run checks each image once, not once per worker
        self._verified = torch.zeros(len(self.rows), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.rows)

    def shape(self, index: int) -> tuple[int, ...]:
        """Stored zyx shape of image ``index`` (from the manifest: no Zarr read)."""
        return tuple(int(n) for n in self.rows[index]["shape"])

    def __getstate__(self) -> dict:
        # never ship open arrays to workers (the shared checked flags go as they are)
        return {**self.__dict__, "_pid": None, "_open": {}}

    def _arrays(self, index: int) -> dict[str, Any]:
        from openmind_prep.store.integrity import check_checksums, open_image

        if self._pid != os.getpid():  # first use in this process (or after a fork)
            self._pid, self._open = os.getpid(), {}
        if index not in self._open:
            if len(self._open) >= _CACHE_SIZE:
                self._open.pop(next(iter(self._open)))
            self._open[index] = open_image(self._store, self.rows[index], self._names)  # confined, shapes checked
        if self.verify and not self._verified[index]:  # the first read: whole arrays, checksummed
            decoded = check_checksums(self._store, self.rows[index], self._open[index])
            self._verified[index] = True
            return decoded
        return self._open[index]

    def read(self, index: int, region: Region | None = None) -> dict:
        """The sample dict of image ``index``, only ``region`` (zyx slices) or the whole volume."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.store}")
        index %= len(self)
        return read_sample(self.keys[index], self._arrays(index), region, self.rows[index])

    def __getitem__(self, item: int | tuple[int, Region]) -> dict:
        if isinstance(item, tuple):
            return self.read(int(item[0]), item[1])
        return self.read(int(item))


class RegionSampler(torch.utils.data.Sampler):
    """Yields ``(index, region)`` for a :class:`ZarrVolumeDataset`: a seeded permutation split by node.

    Rank ``r`` of ``world_size`` gets ``perm[r::world_size]`` (no padding, no duplicates); DataLoader
    workers then take whole batches each, so every image is read once per epoch. Regions of
    ``region_size`` are placed uniformly; call :meth:`set_epoch` each epoch.

    >>> shapes = [(100, 100, 100)] * 5
    >>> [i for i, _ in RegionSampler(shapes, 64, seed=0, rank=1, world_size=2)] == \\
    ...     [i for i, _ in RegionSampler(shapes, 64, seed=0, rank=1, world_size=2)]
    True
    """

    def __init__(self, shapes: Sequence[Sequence[int]], region_size: int | Sequence[int] | None, *,
                 seed: int = 0, shuffle: bool = True, rank: int | None = None, world_size: int | None = None):

        self.shapes, self.region_size, self.seed, self.shuffle = list(shapes), region_size, seed, shuffle
        self.rank, self.world_size = node_rank(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        n = len(self.shapes)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[tuple[int, Region | None]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        for i in self._indices():
            region = None if self.region_size is None else random_region(self.shapes[i], self.region_size, rng)
            yield int(i), region
