"""The method as a value: every setting of a training run, resolved once, frozen.

:func:`resolve` takes the settings given explicitly (config files merged with flags by
:mod:`trainers.cli_args`, or a dict from Python code) and fills every other one in this one place:

* the rung's weights as the reference ran them (the fork's trainers, named in :data:`CONSISTENCY_WEIGHTS`):
  stage 2 (``--init-from`` given, or ``stage = 2`` in a config) C-CVA 0.2, CVA 1.0, Gram 2.0;
  from scratch C-CVA 0.5 and CVA 0.5 (the fork's ``AlignedConConMAETrainer`` / ``AlignedMAETrainer``);
  the AE rung 0.5 (``AlignedAE(FT)Trainer``);
* the reconstruction: nnssl's MSE ×1 for the plain MAE from scratch (``BaseMAETrainer``), the fork's Huber ×5
  for every other rung;
* the optimiser of the architecture's record (:mod:`trainers.architectures`) and its values
  (:data:`OPTIMIZER_DEFAULTS`; the fork's 5e-3 for the AE and the from-scratch C-CVA rungs);
* the per-rank batch from ``global_batch_size`` (nnssl's meaning: split across ranks);
* the teacher momentum (0 for AE, else 0.995).

A value given explicitly always wins. ``trainers.cva.train(settings)`` runs it; ``--dry-run`` prints
:meth:`Settings.as_json`; :mod:`trainers.checks` lists what cannot run.

>>> s = resolve({"arch": "resenc-l", "consistency": "c-cva", "init_from": "runs/mae"})
>>> s.stage, s.consistency_weight, s.recon_loss, s.recon_weight, s.optimizer, s.lr
(2, 0.2, 'huber', 5.0, 'sgd', 0.01)
>>> resolve({"arch": "primus-m", "consistency": "none", "contrastive": False}).recon_loss
'mse'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from trainers import architectures

__all__ = ["Settings", "resolve", "SettingsError", "CONSISTENCY_WEIGHTS", "OPTIMIZER_DEFAULTS", "defaults"]

#: Consistency weight per (rung, stage) and the fork's class it comes from (AlignedMAELoss' fg_cos_weight).
CONSISTENCY_WEIGHTS = {
    ("none", 1): 0.0, ("none", 2): 0.0,
    ("cva", 1): 0.5,     # AlignedMAETrainer: AlignedMAELoss(recon_weight=5.0), fg_cos_weight's default 0.5
    ("cva", 2): 1.0,     # AlignedMAEFTTrainer, AlignedMAEFTLR3EvaTrainer
    ("c-cva", 1): 0.5,   # AlignedConConMAETrainer
    ("c-cva", 2): 0.2,   # AlignedConConMAEFTTrainer, AlignedConConMAEFTEvaTrainer
    ("gram", 1): 2.0,    # no from-scratch class: the FT value
    ("gram", 2): 2.0,    # GramAlignedMAEFT*Trainer, GramAlignedMAEFT*EvaLR3Trainer
}
#: The AE rung (AlignedAETrainer / AlignedAEFTTrainer: AlignedMAELoss' default fg_cos_weight).
AE_CONSISTENCY_WEIGHT = 0.5

#: Optimiser-dependent defaults (nnssl's AbstractTrainer / BaseEvaMAETrainer; warm-up: the fork's 10 epochs of 250).
OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": 1e-2, "weight_decay": 3e-5, "warmup_steps": 0},
    "adamw": {"lr": 3e-4, "weight_decay": 5e-2, "warmup_steps": 2500},
}
#: SGD rungs the fork trains at 5e-3 (AlignedAETrainer, AlignedAEFTTrainer, AlignedConConMAETrainer).
SLOW_SGD_LR = 5e-3

RECON_WEIGHTS = {"mse": 1.0, "huber": 5.0}  # nnssl's MAEMSELoss ×1, the fork's AlignedMAELoss(recon_weight=5.0)


class SettingsError(ValueError):
    """A setting that cannot be resolved; the message names the setting (one line)."""


@dataclass(frozen=True)
class Settings:
    """One training run. ``None`` means "resolve from the rung / architecture" (see :func:`resolve`)."""

    # data
    store: Path | None = None
    shards: str | None = None
    out: Path | None = None
    patch_size: tuple[int, ...] = (128,)
    batch_size: int | None = None          # per rank; default global_batch_size / world, else 4
    global_batch_size: int | None = None   # nnssl's total_batch_size, split across ranks
    region_scale: float = 2.0
    min_overlap: float = 0.4
    max_overlap: float = 0.8
    augment: bool = True
    view_augment: str = "reference"
    num_workers: int = 4
    # method
    stage: int | None = None
    recon: str = "mae"
    consistency: str = "cva"
    contrastive: bool = True
    mask_ratio: float = 0.75
    mask_block: int = 16
    recon_loss: str | None = None
    recon_weight: float | None = None
    consistency_weight: float | None = None
    gram_norm: str = "fork"
    voxel_head: bool = True
    contrastive_weight: float = 0.1
    temperature: float = 0.5
    align_size: int = 7
    pool_size: int = 16
    proj_dim: int = 2048
    # networks
    arch: str = "resenc-l"
    force: bool = False
    drop_path: float = 0.0
    init_from: str | None = None
    init_recon_head: bool = False
    hub_endpoint: str | None = None
    hub_deadline: float | None = None      # seconds to fetch an hf:// --init-from
    ema_momentum: float | None = None
    ema_momentum_end: float | None = None
    # optimisation
    steps: int = 1000
    optimizer: str | None = None
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float | None = None
    momentum: float = 0.99
    warmup_steps: int | None = None
    schedule: str = "poly"
    clip_grad: float | None = None
    # run
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    ckpt_every: int = 100
    log_every: int = 1
    probe_every: int = 0
    checkpoint: bool = True
    resume: bool = True
    stop_at_step: int | None = None
    export: Path | None = None
    export_weights: str = "student"
    world: int = 1                         # processes of the run (from torchrun), to split the global batch

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (already resolved values; nothing is re-resolved)."""
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict:
        """The settings as plain JSON values (``config.json``, every checkpoint, ``--dry-run``).

        >>> resolve({"arch": "tiny", "patch_size": [32]}).as_json()["patch_size"]
        [32, 32, 32]
        """
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out


def defaults() -> dict[str, Any]:
    """Every setting's unresolved default (``--help`` shows these)."""
    return {f.name: f.default for f in fields(Settings)}


_PATHS = ("store", "out", "export")


def resolve(given: Mapping[str, Any], world: int | None = None) -> Settings:
    """The run's settings: ``given`` (explicit values) over the resolved defaults. ``world`` defaults to
    torchrun's ``WORLD_SIZE`` (1 outside torchrun); it splits ``global_batch_size``.

    >>> resolve({"global_batch_size": 8}, world=4).batch_size
    2
    >>> resolve({"global_batch_size": 6}, world=4)
    Traceback (most recent call last):
    ...
    trainers.settings.SettingsError: --global-batch-size 6: not divisible by the 4 processes of this run
    """
    known = defaults()
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SettingsError(f"unknown setting(s) {unknown}")
    s = {**known, **{k: v for k, v in given.items()}}
    for k in _PATHS:
        s[k] = None if s[k] is None else Path(s[k])
    patch = [int(p) for p in (s["patch_size"] if isinstance(s["patch_size"], (list, tuple)) else [s["patch_size"]])]
    s["patch_size"] = tuple(patch * 3 if len(patch) == 1 else patch)
    if world is None:  # torchrun's variable, read without importing torch; train() checks it against the run's
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    s["world"] = world
    record = architectures.get(s["arch"])  # ValueError with a close match for an unknown name
    if s["stage"] is None:
        s["stage"] = 2 if s["init_from"] else 1
    _resolve_batch(s, given, world)
    rung = (s["consistency"], 2 if s["stage"] >= 2 else 1)
    if s["consistency_weight"] is None:
        ae = s["recon"] == "ae" and s["consistency"] != "none"
        s["consistency_weight"] = AE_CONSISTENCY_WEIGHT if ae else CONSISTENCY_WEIGHTS.get(rung, 0.0)
    if s["ema_momentum"] is None:
        s["ema_momentum"] = 0.0 if s["recon"] == "ae" else 0.995
    if s["recon_loss"] is None:
        plain_mae = s["recon"] == "mae" and s["consistency"] == "none" and not s["contrastive"]
        s["recon_loss"] = "mse" if plain_mae and rung[1] == 1 else "huber"
    if s["recon_weight"] is None:
        s["recon_weight"] = RECON_WEIGHTS.get(s["recon_loss"], 1.0)
    if s["optimizer"] is None:
        s["optimizer"] = record.optimizer
    slow = s["optimizer"] == "sgd" and (s["recon"] == "ae" or rung == ("c-cva", 1))
    for name, value in OPTIMIZER_DEFAULTS.get(s["optimizer"], {}).items():
        if s[name] is None:
            s[name] = SLOW_SGD_LR if name == "lr" and slow else value
    if s["clip_grad"] is None:
        s["clip_grad"] = record.clip_grad
    return Settings(**s)


def _resolve_batch(s: dict, given: Mapping[str, Any], world: int) -> None:
    """Per-rank batch from the global one (nnssl's split), or the global one from the per-rank batch."""
    if s["global_batch_size"] is not None and "batch_size" not in given:
        total = s["global_batch_size"]
        if not isinstance(total, int) or total < 1:
            raise SettingsError(f"--global-batch-size {total}: must be a positive integer")
        if total % world:
            raise SettingsError(f"--global-batch-size {total}: not divisible by the {world} processes of this run")
        s["batch_size"] = total // world
    if s["batch_size"] is None:
        s["batch_size"] = 4
    s["global_batch_size"] = s["batch_size"] * world if isinstance(s["batch_size"], int) else None
