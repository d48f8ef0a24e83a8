"""Optimisers per architecture as the reference trains them, and the defaults each choice implies.

nnssl (``AbstractTrainer.configure_optimizers``) trains residual-encoder U-Nets with SGD: lr 1e-2,
momentum 0.99 Nesterov, weight decay 3e-5, a poly (0.9) schedule and no warm-up; its Primus
trainers (``BaseEvaMAETrainer``) with AdamW: lr 3e-4, weight decay 5e-2, betas (0.9, 0.98), a
linear warm-up then poly, gradients clipped at 1 (residual nets: 12, as nnssl and the fork's CVA
trainers). A flag left at ``None`` takes the value of this table for the run's architecture and
optimiser, so ``--arch resenc-l`` alone trains as nnssl does, and the config files state the values.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # torch only when an optimiser is built (``--help`` stays fast)
    import torch

__all__ = ["OPTIMIZERS", "REFERENCE", "resolve_optimizer_defaults", "build_optimizer"]

OPTIMIZERS = ("sgd", "adamw")

# optimiser-dependent defaults (nnssl's AbstractTrainer / BaseEvaMAETrainer)
REFERENCE = {
    "sgd": {"lr": 1e-2, "weight_decay": 3e-5, "warmup_steps": 0},
    "adamw": {"lr": 3e-4, "weight_decay": 5e-2, "warmup_steps": 2500},  # 10 epochs of 250 steps (the fork's CVA stage)
}
_ARCH_OPTIMIZER = {"resenc-l": "sgd", "primus-m": "adamw", "tiny": "adamw"}
_ARCH_CLIP = {"resenc-l": 12.0, "primus-m": 1.0, "tiny": 12.0}


def resolve_optimizer_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the optimiser flags left at ``None`` from :data:`REFERENCE` (in place; returns ``args``).

    >>> a = resolve_optimizer_defaults(argparse.Namespace(arch="resenc-l", optimizer=None, lr=None,
    ...     weight_decay=None, warmup_steps=None, clip_grad=None))
    >>> a.optimizer, a.lr, a.weight_decay, a.warmup_steps, a.clip_grad
    ('sgd', 0.01, 3e-05, 0, 12.0)
    >>> resolve_optimizer_defaults(argparse.Namespace(arch="primus-m", optimizer=None, lr=None,
    ...     weight_decay=None, warmup_steps=100, clip_grad=None)).clip_grad
    1.0
    """
    if args.optimizer is None:
        args.optimizer = _ARCH_OPTIMIZER[args.arch]
    for name, value in REFERENCE[args.optimizer].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.clip_grad is None:
        args.clip_grad = _ARCH_CLIP[args.arch]
    return args


def build_optimizer(params: Iterable["torch.nn.Parameter"], args: argparse.Namespace) -> "torch.optim.Optimizer":
    """SGD (momentum ``args.momentum``, Nesterov) or AdamW (betas 0.9, 0.98), at ``args.lr``.

    The learning rate is overwritten every step from the run's schedule.

    >>> import torch
    >>> opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], argparse.Namespace(
    ...     optimizer="sgd", lr=1e-2, weight_decay=3e-5, momentum=0.99))
    >>> type(opt).__name__, opt.defaults["nesterov"], opt.defaults["momentum"]
    ('SGD', True, 0.99)
    """
    import torch

    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, nesterov=True,
                               weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    raise ValueError(f"unknown optimizer {args.optimizer!r}; choose one of {OPTIMIZERS}")
