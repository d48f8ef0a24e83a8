"""Networks, initial weights and recipes for fine-tuning.

* ``seg``: the architecture's encoder-decoder with ``classes`` outputs. Pretrained weights load as
  nnssl's ``load_pretrained_weights`` does: every tensor whose name and shape fit, except the output
  head (``.seg_layers.``), which stays fresh.
* ``cls`` / ``reg``: the encoder, global average pooling of its deepest features, one linear layer.
* Recipes (per step; an "epoch" is ``iterations`` steps): the fork's ``PretrainedTrainer`` for residual
  U-Nets (SGD, momentum 0.99 Nesterov, weight decay 3e-5, lr 1e-3 pretrained / 1e-2 from scratch,
  clip 12 as nnU-Net) and ``PretrainedTrainer_Primus`` for Primus (AdamW betas 0.9/0.98, weight decay
  5e-2, lr 1e-4 / 3e-4, clip 1): a linear warm-up of the whole net over the first tenth of the epochs
  (the fork's short variants: 15 of 150, 10 of 100), then poly 0.9. ``cls`` / ``reg``: the FOMO
  baseline's AdamW (lr 1e-4, weight decay 3e-5) with cosine annealing over 1.15 × the epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

SEG_HEAD = ".seg_layers."


class PooledHead(nn.Module):
    """Encoder → mean over space of its last feature map → linear (classes, or 1 for regression)."""

    def __init__(self, backbone: nn.Module, outputs: int, patch: Sequence[int]) -> None:
        super().__init__()
        from trainers.networks import stage_features

        self.backbone = backbone
        self._features = stage_features
        with torch.no_grad():
            width = self._pooled(torch.zeros(1, 1, *patch)).shape[1]
        self.head = nn.Linear(width, outputs)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        feats, _ = self._features(self.backbone, x, decode=False)
        return feats[-1].mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._pooled(x))


def build_model(arch: str, task: str, patch: Sequence[int], outputs: int) -> nn.Module:
    """The fine-tuning network of ``arch`` for ``task`` (``outputs``: classes, or 1 for regression)."""
    from trainers.architectures import build_backbone
    from trainers.networks import primus_m

    if task == "seg":
        if arch == "primus-m":  # the plain Primus (no MAE decoder) the fork's adaptation builds
            return primus_m(1, outputs, patch)
        return build_backbone(arch, patch, 1, outputs)
    backbone = primus_m(1, 1, patch) if arch == "primus-m" else build_backbone(arch, patch, 1, 1)
    if hasattr(backbone, "decoder") and not hasattr(backbone, "eva"):
        backbone.decoder = nn.Identity()  # not used: the encoder's features only
    return PooledHead(backbone, outputs, patch)


def load_init(model: nn.Module, weights: dict[str, torch.Tensor], source: str, task: str) -> list[str]:
    """Copy the pretrained ``weights`` that fit into ``model``; returns the model keys loaded.

    The output head is never loaded (nnssl's rule); every encoder tensor of the model must be present
    with its shape, else ``ValueError`` naming the first misfits (a checkpoint of another architecture)."""
    prefix = "backbone." if task != "seg" else ""
    own = model.state_dict()
    loaded, misfit = [], []
    for key, value in own.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is None or SEG_HEAD in f".{name}":
            continue
        found = weights.get(name)
        if found is not None and tuple(found.shape) == tuple(value.shape):
            loaded.append(key)
        elif _is_encoder(name):
            misfit.append(name)
    if misfit or not loaded:
        shown = ", ".join(misfit[:3]) or "no key of this network"
        raise ValueError(f"{source}: does not fit this network ({len(misfit)} encoder tensor(s) missing or of "
                         f"another shape: {shown})")
    model.load_state_dict({k: weights[k[len(prefix):]] for k in loaded}, strict=False)
    return loaded


def _is_encoder(name: str) -> bool:
    return name.startswith(("encoder.", "down_projection.", "eva."))


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of one fine-tuning run (values as the reference trainers use them)."""

    optimizer: str  # "sgd" | "adamw"
    lr: float
    weight_decay: float
    clip: float
    schedule: str  # "warmup-poly" | "cosine"
    warmup_epochs: int
    accumulation: int = 1

    def lr_at(self, epoch: float, epochs: int) -> float:
        """The learning rate at (fractional) ``epoch`` of ``epochs``.

        >>> r = Recipe("sgd", 1e-3, 3e-5, 12.0, "warmup-poly", 5)
        >>> [round(r.lr_at(e, 50) * 1e4, 3) for e in (0, 4, 5, 49)]
        [2.0, 10.0, 10.0, 0.325]
        """
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / (1.15 * epochs)))
        e = int(epoch)
        if e < self.warmup_epochs:  # the fork's Lin_incr_LRScheduler: (epoch + 1) / warm-up
            return self.lr * (e + 1) / self.warmup_epochs
        span = max(epochs - self.warmup_epochs, 1)
        return self.lr * (1 - (e - self.warmup_epochs) / span) ** 0.9


def recipe(arch: str, task: str, *, pretrained: bool, epochs: int) -> Recipe:
    """The reference's recipe for ``arch`` / ``task`` (see the module docstring)."""
    if task in ("cls", "reg"):
        return Recipe("adamw", 1e-4, 3e-5, 0.0, "cosine", 0, accumulation=8 if task == "cls" else 16)
    warmup = max(1, epochs // 10)
    if arch == "primus-m":
        return Recipe("adamw", 1e-4 if pretrained else 3e-4, 5e-2, 1.0, "warmup-poly", warmup)
    return Recipe("sgd", 1e-3 if pretrained else 1e-2, 3e-5, 12.0, "warmup-poly", warmup)


def build_optimizer(params, r: Recipe) -> torch.optim.Optimizer:
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, r.lr, momentum=0.99, nesterov=True, weight_decay=r.weight_decay)
    betas = (0.9, 0.98) if r.schedule == "warmup-poly" else (0.9, 0.999)
    return torch.optim.AdamW(params, r.lr, betas=betas, weight_decay=r.weight_decay)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """nnU-Net's ``DC_and_CE_loss`` (weights 1:1): cross-entropy + (−soft Dice over the foreground classes,
    per sample, smooth 1e-5, as ``MemoryEfficientSoftDiceLoss``)."""
    ce = nn.functional.cross_entropy(logits, target)
    probs = logits.softmax(1)[:, 1:]
    onehot = nn.functional.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].to(probs.dtype)
    axes = (2, 3, 4)
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dc = (2 * intersect + smooth) / (denom + smooth).clamp_min(1e-8)
    return ce - dc.mean()
