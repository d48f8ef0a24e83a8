"""Who am I in the job: the rank of this process among the nodes (``torch.distributed``) and of
this DataLoader worker among its siblings. Both loaders split their work with these."""

from __future__ import annotations

import torch


def node_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else ``torch.distributed``'s, else (0, 1).

    >>> node_rank(), node_rank(3, 4)
    ((0, 1), (3, 4))
    """
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank, world_size = (0 if rank is None else rank), (1 if world_size is None else world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return rank, world_size


def worker_rank(worker: int | None = None, num_workers: int | None = None) -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) outside one."""
    info = torch.utils.data.get_worker_info()
    worker = (info.id if info else 0) if worker is None else worker
    num_workers = (info.num_workers if info else 1) if num_workers is None else num_workers
    return worker, num_workers

