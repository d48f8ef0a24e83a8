"""Where a training run executes and what it needs: processes, device, threads, a memory estimate.

Light at import (no torch): the trainer's ``--help`` lists :data:`ARCHITECTURES` from here.

>>> round(memory_estimate_gib("resenc-l", [128, 128, 128], 4))
70
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # torch loads when a run starts
    import argparse

    import torch

ARCHITECTURES = ("resenc-l", "primus-m", "tiny")

#: Each patch axis must be a multiple of this (the encoder's total stride: the decoder's skips must match).
PATCH_MULTIPLE = {"resenc-l": 32, "primus-m": 8, "tiny": 8}

#: Architectures too large for a CPU without ``--force``.
LARGE = ("resenc-l", "primus-m")

# (backbone parameters, activation bytes per view voxel), from the measured peak RSS of benchmarks/train_step.py
# (batch 1, 64³, MAE + CVA + NT-Xent: ResEnc-L 4.5 GiB, Primus-M 6.6 GiB on a CPU) less the weights
# and ~0.5 GiB of runtime; tiny: 770 B per voxel between 64³ and 96³ (tiny_cpu, batch 2: 1.3 and 3.2 GB peak).
# Weights cost 20 bytes per parameter: student, teacher, gradient, 2 AdamW moments.
_FOOTPRINT = {"resenc-l": (102_348_965, 4.3e3), "primus-m": (151_786_529, 6.7e3), "tiny": (500_000, 0.8e3)}
#: Channels of the pooled features the projector takes (all encoder stages; Primus: its token width).
_FEATURES = {"resenc-l": 1120, "primus-m": 864, "tiny": 120}
_RUNTIME_BYTES = 0.5 * 2**30


def head_parameters(arch: str, proj_dim: int) -> int:
    """Parameters of the projector (features → P → P → P) and predictor (P → P/4 → P), biases left out.

    >>> head_parameters("resenc-l", 2048)  # the network itself has 12,788,224 (norms and biases added)
    12779520
    """
    return _FEATURES[arch] * proj_dim + 2 * proj_dim * proj_dim + 2 * proj_dim * (proj_dim // 4)


def memory_estimate_gib(arch: str, patch_size: Sequence[int], batch_size: int, proj_dim: int = 0) -> float:
    """Rough peak memory of one training process: weights (with heads of width ``proj_dim``; 0: none) +
    optimiser + two views' activations + runtime."""
    params, per_voxel = _FOOTPRINT[arch]
    views = 2 * batch_size * math.prod(int(p) for p in patch_size)
    return (20 * (params + head_parameters(arch, proj_dim)) + per_voxel * views + _RUNTIME_BYTES) / 2**30


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
    if arch in LARGE:
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
    need = 20 * (_FOOTPRINT[arch][0] + head_parameters(arch, proj_dim)) / 2**30
    if need <= gpu_gib:
        return None
    return (f"the weights of {arch} with --proj-dim {proj_dim} need about {need:.0f} GiB (20 B per parameter); "
            f"the GPU has {gpu_gib:.0f} GiB")


def invalid_settings(args: argparse.Namespace) -> str | None:
    """The first trainer setting out of its range (as a usage message), else None.

    >>> from argparse import Namespace
    >>> invalid_settings(Namespace(store="s", shards=None, out="o", arch="resenc-l", patch_size=[96, 96, 80]))
    '--patch-size [96, 96, 80]: resenc-l needs multiples of 32 per axis'
    """
    if (args.store is None) == (args.shards is None) or args.out is None:
        return "--out and exactly one of --store / --shards are required (on the command line or in --config)"
    multiple = PATCH_MULTIPLE[args.arch]
    if len(args.patch_size) != 3:
        return f"--patch-size {args.patch_size}: 1 or 3 integers"
    if any(p < multiple or p % multiple for p in args.patch_size):
        return f"--patch-size {args.patch_size}: {args.arch} needs multiples of {multiple} per axis"
    for name in ("batch_size", "steps", "ckpt_every", "log_every", "mask_block", "align_size", "pool_size", "proj_dim"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}"
    for name in ("num_workers", "warmup_steps", "threads", "probe_every", "lr", "min_lr", "weight_decay", "clip_grad",
                 "drop_path", "temperature"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative, not {getattr(args, name)}"
    if not (0 < args.min_overlap <= args.max_overlap <= 1 and 0 <= args.mask_ratio < 1 and args.region_scale >= 1):
        return "need 0 < --min-overlap <= --max-overlap <= 1, 0 <= --mask-ratio < 1 and --region-scale >= 1"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out}: a file, not a run folder"
    return None


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
