"""Who am I in the job: the rank of this process among the nodes and of this DataLoader worker
among its siblings. Both loaders split their work with these; unless given explicitly, the values
are webdataset's own (``wds.utils.pytorch_worker_info``: ``RANK``/``WORLD_SIZE`` and
``WORKER``/``NUM_WORKERS`` from the environment, else ``torch.distributed`` and the DataLoader
worker info), so our splits and ``wds.split_by_node`` / ``wds.split_by_worker`` always agree."""

from __future__ import annotations


def node_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else webdataset's lookup, else (0, 1).

    >>> node_rank(), node_rank(3, 4)
    ((0, 1), (3, 4))
    """
    from webdataset.utils import pytorch_worker_info

    found_rank, found_world, _, _ = pytorch_worker_info()
    rank = found_rank if rank is None else rank
    world_size = found_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return rank, world_size


def worker_rank(worker: int | None = None, num_workers: int | None = None) -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) outside one.

    >>> worker_rank(), worker_rank(1, 2)
    ((0, 1), (1, 2))
    """
    from webdataset.utils import pytorch_worker_info

    _, _, found_worker, found_workers = pytorch_worker_info()
    worker = found_worker if worker is None else worker
    num_workers = found_workers if num_workers is None else num_workers
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} outside {num_workers} workers")
    return worker, num_workers
