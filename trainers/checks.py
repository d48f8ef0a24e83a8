"""What a resolved run cannot do: one line per problem, as a usage message (the command line exits 2).

:func:`problems` runs every check of :data:`CHECKS` on a :class:`trainers.settings.Settings`; a check is a
function ``(settings) -> str | None``; :mod:`trainers.sanity` (non-finite and absurd numbers) runs after them.
Add a check by appending to :data:`CHECKS` (or :func:`register`). :func:`inputs_problem` is the separate
check that a run (not a ``--dry-run``) has its data and run folder.

>>> from trainers.settings import resolve
>>> problems(resolve({"arch": "resenc-l", "patch_size": [96, 96, 80]}, world=1))
['--patch-size [96, 96, 80]: resenc-l needs multiples of 32 per axis']
>>> problems(resolve({"arch": "primus-m", "mask_block": 12}, world=1))
['--mask-block 12: a Primus-style MAE hides whole 8³ tokens of primus-m, use a multiple of 8']
"""

from __future__ import annotations

from typing import Callable

from trainers import architectures
from trainers.settings import Settings

__all__ = ["CHECKS", "register", "problems", "inputs_problem"]

_AT_LEAST_1 = ("batch_size", "steps", "ckpt_every", "log_every", "mask_block", "align_size", "pool_size", "proj_dim")
_NOT_NEGATIVE = ("num_workers", "warmup_steps", "threads", "probe_every", "lr", "min_lr", "weight_decay", "clip_grad",
                 "drop_path", "temperature", "recon_weight", "consistency_weight", "contrastive_weight")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def patch_problem(s: Settings) -> str | None:
    """Each patch axis a multiple of the architecture's total stride."""
    multiple = architectures.get(s.arch).patch_multiple
    if len(s.patch_size) != 3:
        return f"--patch-size {list(s.patch_size)}: 1 or 3 integers"
    if any(p < multiple or p % multiple for p in s.patch_size):
        return f"--patch-size {list(s.patch_size)}: {s.arch} needs multiples of {multiple} per axis"
    return None


def range_problem(s: Settings) -> str | None:
    """Counts at least 1, rates and weights not negative, overlaps and ratios in their intervals."""
    for name in _AT_LEAST_1:
        if getattr(s, name) < 1:
            return f"{_flag(name)} must be at least 1, not {getattr(s, name)}"
    for name in _NOT_NEGATIVE:
        if getattr(s, name) < 0:
            return f"{_flag(name)} must not be negative, not {getattr(s, name)}"
    if not (0 < s.min_overlap <= s.max_overlap <= 1 and 0 <= s.mask_ratio < 1 and s.region_scale >= 1):
        return "need 0 < --min-overlap <= --max-overlap <= 1, 0 <= --mask-ratio < 1 and --region-scale >= 1"
    if s.stage not in (1, 2):
        return f"stage {s.stage}: 1 (from scratch) or 2 (from a stage-1 run)"
    return None


def rung_problem(s: Settings) -> str | None:
    """A rung the architecture cannot run: an MAE on a ViT hides whole tokens."""
    token = architectures.get(s.arch).token
    if token and s.recon == "mae" and s.mask_block % token:
        return (f"--mask-block {s.mask_block}: a Primus-style MAE hides whole {token}³ tokens of {s.arch}, "
                f"use a multiple of {token}")
    return None


CHECKS: list[Callable[[Settings], str | None]] = [patch_problem, range_problem, rung_problem]


def register(check: Callable[[Settings], str | None]) -> Callable[[Settings], str | None]:
    """Add ``check`` to :data:`CHECKS` (usable as a decorator); returns it."""
    CHECKS.append(check)
    return check


def problems(s: Settings) -> list[str]:
    """Every message for ``s`` (empty: the settings can run): each check of :data:`CHECKS`, then
    :func:`trainers.sanity.problems` (numbers that are not finite or absurd)."""
    from trainers import sanity

    return [m for m in (check(s) for check in CHECKS) if m] + sanity.problems(s)


def inputs_problem(s: Settings) -> str | None:
    """A run needs ``--out`` and exactly one of ``--store`` / ``--shards``; ``--out`` must not be a file."""
    if (s.store is None) == (s.shards is None) or s.out is None:
        return "--out and exactly one of --store / --shards are required (on the command line or in --config)"
    if s.out.exists() and not s.out.is_dir():
        return f"--out {s.out}: a file, not a run folder"
    return None
