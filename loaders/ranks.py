"""Who am I in the job: the rank of this process among the nodes and of this DataLoader worker
among its siblings. Both loaders split their work with these; unless given explicitly, the values
are webdataset's own (``wds.utils.pytorch_worker_info``: ``RANK``/``WORLD_SIZE`` and
``WORKER``/``NUM_WORKERS`` from the environment, else ``torch.distributed`` and the DataLoader
worker info), so our splits and ``wds.split_by_node`` / ``wds.split_by_worker`` always agree."""

from __future__ import annotations


def _resolve(index: int | None, count: int | None, at: int, what: str) -> tuple[int, int]:
    from webdataset.utils import pytorch_worker_info

    found = pytorch_worker_info()[at:at + 2]
    index, count = (found[0] if index is None else index), (found[1] if count is None else count)
    if not 0 <= index < count:
        raise ValueError(f"{what} {index} outside {count}")
    return index, count


def node_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else webdataset's lookup, else (0, 1).

    >>> node_rank(), node_rank(3, 4)
    ((0, 1), (3, 4))
    """
    return _resolve(rank, world_size, 0, "rank")


def worker_rank(worker: int | None = None, num_workers: int | None = None) -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) outside one.

    >>> worker_rank(), worker_rank(1, 2)
    ((0, 1), (1, 2))
    """
    return _resolve(worker, num_workers, 2, "worker")
