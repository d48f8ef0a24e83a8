"""Where a training run executes and what it needs: processes, device, threads, a memory estimate.

Light at import (no torch); the numbers per architecture are its record's (:mod:`trainers.architectures`).

>>> round(memory_estimate_gib("resenc-l", [128, 128, 128], 4))
70
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from trainers import architectures

if TYPE_CHECKING:  # torch loads when a run starts
    import torch

_RUNTIME_BYTES = 0.5 * 2**30


def head_parameters(arch: str, proj_dim: int) -> int:
    """Parameters of the projector (features → P → P → P) and predictor (P → P/4 → P), biases left out; the
    features are the record's ``feature_channels`` (:mod:`trainers.architectures`).

    >>> head_parameters("resenc-l", 2048)  # the network itself has 12,788,224 (norms and biases added)
    12779520
    """
    features = architectures.get(arch).feature_channels
    return features * proj_dim + 2 * proj_dim * proj_dim + 2 * proj_dim * (proj_dim // 4)


def memory_estimate_gib(arch: str, patch_size: Sequence[int], batch_size: int, proj_dim: int = 0) -> float:
    """Rough peak memory of one training process: weights (with heads of width ``proj_dim``; 0: none) +
    optimiser + two views' activations + runtime. Weights cost 20 bytes per parameter (student, teacher,
    gradient, 2 AdamW moments); activations the record's bytes per view voxel."""
    record = architectures.get(arch)
    views = 2 * batch_size * math.prod(int(p) for p in patch_size)
    return (20 * (record.params + head_parameters(arch, proj_dim)) + record.bytes_per_voxel * views
            + _RUNTIME_BYTES) / 2**30


def machine_memory_gib() -> float:
    """Memory this process may use: the physical memory, or the container's limit (cgroup) when lower
    (0 where the OS does not say)."""
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0.0
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            have = min(have, int(open(limit).read().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return have / 2**30


def cpu_refusal(arch: str, patch_size: Sequence[int], batch_size: int, proj_dim: int = 0) -> str | None:
    """Why a run should not start on this CPU (``--force`` starts it anyway), else None: a large architecture
    (minutes per step), or an estimate above this machine's memory (the kernel would kill it part-way).

    >>> cpu_refusal("tiny", [32] * 3, 2) is None
    True
    >>> "--force" in cpu_refusal("primus-m", [160] * 3, 4)
    True
    >>> cpu_refusal("tiny", [4096] * 3, 2).split(" (")[0]
    'tiny at 4096x4096x4096, batch 2, needs about 204801 GiB of memory'
    """
    need, have = memory_estimate_gib(arch, patch_size, batch_size, proj_dim), machine_memory_gib()
    shape = "x".join(str(int(p)) for p in patch_size)
    if architectures.get(arch).large:
        return (f"{arch} at {shape}, batch {batch_size}, on a CPU needs about {need:.0f} GiB of memory (estimate; "
                f"this machine has {have:.0f} GiB) and minutes per step: train on a GPU, use --config tiny_cpu, "
                "or pass --force to run it anyway")
    if have and need > have:
        return (f"{arch} at {shape}, batch {batch_size}, needs about {need:.0f} GiB of memory (estimate; this machine "
                f"has {have:.0f} GiB): lower --patch-size, --batch-size or --proj-dim (--force runs it anyway)")
    return None


def gpu_refusal(arch: str, proj_dim: int, gpu_gib: float) -> str | None:
    """Why a run cannot start on a GPU of ``gpu_gib``: its weights and optimiser state alone exceed it.

    >>> gpu_refusal("tiny", 10**9, 80.0).split(";")[0]
    'the weights of tiny with --proj-dim 1000000000 need about 46566130966 GiB (20 B per parameter)'
    >>> gpu_refusal("resenc-l", 2048, 80.0) is None
    True
    """
    need = 20 * (architectures.get(arch).params + head_parameters(arch, proj_dim)) / 2**30
    if need <= gpu_gib:
        return None
    return (f"the weights of {arch} with --proj-dim {proj_dim} need about {need:.0f} GiB (20 B per parameter); "
            f"the GPU has {gpu_gib:.0f} GiB")


@dataclass(frozen=True)
class Processes:
    """This process's place in the run (from torchrun's environment) and its device."""

    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def cuda(self) -> bool:
        return getattr(self.device, "type", "cpu") == "cuda"


def cuda_refusal(device: str, index: int, world: int) -> str | None:
    """Why ``--device`` cannot be used here: no CUDA device, or no device ``index``, else None.

    >>> cuda_refusal("cuda:99999", 99999, 1).startswith("--device cuda:99999: no CUDA device")
    True
    """
    import torch

    if not torch.cuda.is_available():
        return f"--device {device}: no CUDA device here (torch.cuda.is_available() is False); use --device cpu or auto"
    if ":" in device and world > 1:
        return f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; use --device cuda"
    if index >= torch.cuda.device_count():
        return f"--device {device}: no CUDA device {index} here ({torch.cuda.device_count()} visible)"
    return None


def setup_processes(device: str, threads: int = 0) -> Processes:
    """Rank / world from torchrun's variables, the device (``auto``: CUDA when present; ``cuda:N`` one GPU of a
    single process), process group, threads; ``ValueError`` (one line) for a device this machine does not have."""
    import torch
    import torch.distributed as dist

    from loaders.ranks import node_rank  # the loaders' own lookup, so rank and data split always agree

    rank, world = node_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    index = int(device.partition(":")[2] or local_rank) if world == 1 else local_rank
    refusal = cuda_refusal(device, index, world) if use_cuda else None
    if refusal:
        raise ValueError(refusal)
    dev = torch.device(f"cuda:{index}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if threads:
        torch.set_num_threads(threads)
    return Processes(rank, local_rank, world, dev)
