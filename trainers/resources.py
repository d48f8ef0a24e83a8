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

# (parameters, activation bytes per view voxel), from the measured peak RSS of benchmarks/train_step.py
# (batch 1, 64³, MAE + CVA + NT-Xent: ResEnc-L 4.5 GiB, Primus-M 6.6 GiB on a CPU) less the weights
# and ~0.5 GiB of runtime. Weights cost 20 bytes per parameter: student, teacher, gradient, 2 AdamW moments.
_FOOTPRINT = {"resenc-l": (102_348_965, 4.3e3), "primus-m": (151_786_529, 6.7e3), "tiny": (500_000, 0.4e3)}
_RUNTIME_BYTES = 0.5 * 2**30


def memory_estimate_gib(arch: str, patch_size: Sequence[int], batch_size: int) -> float:
    """Rough peak memory of one training process: weights + optimiser + two views' activations + runtime."""
    params, per_voxel = _FOOTPRINT[arch]
    views = 2 * batch_size * math.prod(int(p) for p in patch_size)
    return (20 * params + per_voxel * views + _RUNTIME_BYTES) / 2**30


def machine_memory_gib() -> float:
    """Physical memory of this machine (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def cpu_refusal(arch: str, patch_size: Sequence[int], batch_size: int) -> str | None:
    """The message that asks for ``--force`` when a large architecture would train on a CPU, else None.

    >>> cpu_refusal("tiny", [32] * 3, 2) is None
    True
    >>> "--force" in cpu_refusal("primus-m", [160] * 3, 4)
    True
    """
    if arch not in LARGE:
        return None
    need, have = memory_estimate_gib(arch, patch_size, batch_size), machine_memory_gib()
    shape = "x".join(str(int(p)) for p in patch_size)
    return (f"{arch} at {shape}, batch {batch_size}, on a CPU needs about {need:.0f} GiB of memory (estimate; this "
            f"machine has {have:.0f} GiB) and minutes per step: train on a GPU, use --config tiny_cpu, "
            "or pass --force to run it anyway")


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


def setup_processes(device: str, threads: int = 0) -> Processes:
    """Rank / world from torchrun's variables, the device (``auto``: CUDA when present), process group, threads."""
    import torch
    import torch.distributed as dist

    from loaders.ranks import node_rank  # the loaders' own lookup, so rank and data split always agree

    rank, world = node_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if threads:
        torch.set_num_threads(threads)
    return Processes(rank, local_rank, world, dev)
