"""One batch source for training: a Zarr store or WebDataset shards behind one interface.

A trainer asks for collated batches (:func:`loaders.collate_volumes`) and saves / restores where it
is; it never needs to know which of the two loaders feeds it::

    source = batch_source(store=STORE, batch_size=4, region_size=[64, 64, 64], seed=0)
    source.load_state_dict(checkpoint["data"])      # resume: {"position": batches already used}
    for batch in source: ...                        # endless, epoch after epoch
    checkpoint["data"] = source.state_dict()

The position counts the batches handed out. From a store, this rank's reads — (index, region) pairs
from :class:`loaders.RegionSampler`, epoch after epoch — are a pure function of the seed, so batch
``b`` always reads items ``[b·B, (b+1)·B)``: a resumed run replays exactly the data a straight run
would have read. From shards, the stream is infinite and resampled (shards drawn with replacement,
seeded by node and worker) and its epoch seed is the start position: a resumed run continues with
a fresh seeded stream instead of replaying the order.

Bad input (no store, an empty store, an unreadable shard index, fewer images than processes)
raises :class:`ValueError` with a one-line message naming the path.
"""

from __future__ import annotations

import itertools
import math
import signal
from pathlib import Path
from typing import Iterator, Sequence

import torch

from loaders.collate import collate_volumes
from loaders.webdataset_stream import WebDatasetStream
from loaders.zarr_dataset import RegionSampler, ZarrVolumeDataset


class _RunReads(torch.utils.data.Sampler):
    """This rank's (index, region) reads from item ``start`` on, epoch after epoch, without end."""

    def __init__(self, reads: RegionSampler, start: int) -> None:
        self.reads, self.start = reads, start

    def __iter__(self) -> Iterator:
        epoch, skip = divmod(self.start, len(self.reads))
        while True:
            self.reads.set_epoch(epoch)
            yield from itertools.islice(iter(self.reads), skip, None)
            epoch, skip = epoch + 1, 0


def leave_signals_to_main(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT / SIGTERM sent to the whole process group.

    The main process decides: it stops between batches, saves, and shuts the workers down (a worker
    killed by the signal would instead make the DataLoader raise in the middle of the step).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


class BatchSource:
    """Collated batches from a store or shards; ``iter()`` starts at :attr:`position`.

    Built by :func:`batch_source`. Attributes: ``volumes`` (images in the whole data set, for the
    epoch length), ``steps_per_epoch`` (batches per epoch on each of ``world`` ranks), ``position``.
    """

    def __init__(self, dataset, reads: RegionSampler | None, *, volumes: int, batch_size: int, world: int,
                 num_workers: int, pin_memory: bool, name: str) -> None:
        self.dataset, self.reads, self.volumes, self.name = dataset, reads, volumes, name
        self.batch_size, self.world, self.num_workers, self.pin_memory = batch_size, world, num_workers, pin_memory
        self.steps_per_epoch = max(1, math.ceil(volumes / world / batch_size))
        self.position = 0

    def state_dict(self) -> dict:
        """Where the source stands: ``{"position": batches handed out}`` (plain ints)."""
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved :meth:`state_dict` (call before iterating)."""
        self.position = int(state["position"])

    def __iter__(self) -> Iterator[dict]:
        extra: dict = {}
        if self.reads is not None:  # exact replay: the reads of batch b are items [b·B, (b+1)·B)
            extra["sampler"] = _RunReads(self.reads, self.position * self.batch_size)
        else:  # an infinite resampled stream, seeded by the start position
            self.dataset.set_epoch(self.position)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, collate_fn=collate_volumes, num_workers=self.num_workers,
            pin_memory=self.pin_memory, multiprocessing_context="spawn" if self.num_workers else None,
            worker_init_fn=leave_signals_to_main if self.num_workers else None, **extra)
        batches = iter(loader)
        try:
            for batch in batches:
                self.position += 1
                yield batch
        finally:
            del batches  # shut the DataLoader workers down

    def first_batch(self, n: int) -> dict:
        """A collated batch of the first ``n`` samples (whole volumes from a store; a fresh pass of a stream).

        For a fixed probe batch; it does not move :attr:`position`.
        """
        if isinstance(self.dataset, ZarrVolumeDataset):
            return collate_volumes([self.dataset[i] for i in range(min(n, len(self.dataset)))])
        return collate_volumes([s for _, s in zip(range(n), iter(self.dataset))])


def batch_source(*, store: str | Path | None = None, shards: str | None = None, batch_size: int,
                 region_size: Sequence[int], seed: int = 0, rank: int = 0, world: int = 1, num_workers: int = 0,
                 pin_memory: bool = False) -> BatchSource:
    """A :class:`BatchSource` over exactly one of ``store`` (Zarr, exact replay) or ``shards`` (stream).

    Each sample is a random region of ``region_size`` voxels (zyx) of one volume, masks and labels not read.

    >>> import tempfile
    >>> batch_source(store=Path(tempfile.mkdtemp()) / "none", batch_size=2, region_size=[8, 8, 8])
    Traceback (most recent call last):
    ...
    ValueError: ...none: not a preprocessed store (manifest.parquet missing ...)
    """
    if (store is None) == (shards is None):
        raise ValueError("give exactly one of store / shards")
    region = [int(r) for r in region_size]
    if store is not None:
        from openmind_prep.store.store import Store, StoreError

        store = Path(store)
        try:
            opened = Store.open(store)
        except StoreError as err:  # no manifest (nor fragments): nothing preprocessed here
            reason = str(err).removeprefix(f"{store / 'manifest.parquet'}: ")
            raise ValueError(f"{store}: not a preprocessed store (manifest.parquet {reason})") from None
        try:
            dataset = ZarrVolumeDataset(opened, masks=False, labels=False)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{store}: cannot read its manifest ({type(err).__name__}: {err})") from None
        if len(dataset) == 0:
            raise ValueError(f"{store}: no 'ok' images to train on (preprocess some first)")
        if len(dataset) < world:
            raise ValueError(f"{store}: {len(dataset)} images cannot feed {world} processes")
        reads = RegionSampler([dataset.shape(i) for i in range(len(dataset))], region, seed=seed, rank=rank,
                              world_size=world)
        volumes, name = len(dataset), str(store)
    else:
        try:
            dataset = WebDatasetStream(shards, seed=seed, region_size=region, resampled=True, masks=False,
                                       labels=False)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{shards}: cannot read the shard index ({type(err).__name__}: {err})") from None
        if not dataset.urls:
            raise ValueError(f"{shards}: the shard index lists no shards")
        reads = None
        volumes = sum(int(r.get("samples", 0)) for r in dataset.records.values()) or len(dataset.urls)
        name = str(shards)
    return BatchSource(dataset, reads, volumes=volumes, batch_size=batch_size, world=world,
                       num_workers=num_workers, pin_memory=pin_memory, name=name)
