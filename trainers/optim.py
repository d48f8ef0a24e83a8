"""The optimisers as the reference builds them (their default values are resolved in :mod:`trainers.settings`).

nnssl (``AbstractTrainer.configure_optimizers``) trains residual-encoder U-Nets with SGD: lr 1e-2,
momentum 0.99 Nesterov, weight decay 3e-5, a poly (0.9) schedule and no warm-up; its Primus
trainers (``BaseEvaMAETrainer``) with AdamW: lr 3e-4, weight decay 5e-2, betas (0.9, 0.98), a
linear warm-up then poly, gradients clipped at 1 (residual nets: 12, as nnssl and the fork's CVA
trainers). A flag left at ``None`` takes the value of ``trainers.settings.OPTIMIZER_DEFAULTS`` for the run's architecture and
optimiser (the architecture's record names its optimiser and clip), so ``--arch resenc-l`` alone trains as
nnssl does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # torch only when an optimiser is built (``--help`` stays fast)
    import torch

    from trainers.settings import Settings

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(params: Iterable["torch.nn.Parameter"], args: Settings) -> "torch.optim.Optimizer":
    """SGD (momentum ``args.momentum``, Nesterov) or AdamW (betas 0.9, 0.98), at ``args.lr``.

    The learning rate is overwritten every step from the run's schedule.

    >>> import torch
    >>> from trainers.settings import resolve
    >>> opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], resolve({"arch": "resenc-l"}, world=1))
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
