"""A backbone's weights from what a user hands us: a ``trainers.cva`` run folder, its
``checkpoint.pt``, or an nnssl-format checkpoint (our ``--export`` or nnssl's). One reader for
``--init-from`` (:mod:`trainers.init_from`) and the tissue probe (:mod:`trainers.probe_io`).

Always ``torch.load(weights_only=True)`` (a checkpoint is data, never code); every failure is one
``ValueError`` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["read_checkpoint", "strip_wrappers", "backbone_weights"]

_WRAPPERS = ("module.", "_orig_mod.")  # DDP / torch.compile prefixes


def read_checkpoint(path: str | Path) -> tuple[Path, Any]:
    """``(file, contents)``: a run folder means its ``checkpoint.pt`` (or ``checkpoint.prev.pt`` when a
    kill left only that).

    >>> import tempfile
    >>> read_checkpoint(Path(tempfile.mkdtemp()) / "nope.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: .../nope.pth: no such file or directory
    """
    from trainers.runfolder import CHECKPOINT, PREVIOUS

    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT).is_file() and not (path / PREVIOUS).is_file():
            raise ValueError(f"{path}: a run folder without {CHECKPOINT}")
        path = path / (CHECKPOINT if (path / CHECKPOINT).is_file() else PREVIOUS)
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory")
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line for the user
        raise ValueError(f"{path}: not a checkpoint torch.load(weights_only=True) accepts "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def strip_wrappers(weights: dict, prefix: str = "") -> dict:
    """Keys without DDP / compile wrappers, keeping those under ``prefix`` (dropped from the key).

    >>> strip_wrappers({"module._orig_mod.backbone.w": 1, "head.b": 2}, "backbone.")
    {'w': 1}
    """
    out = {}
    for key, value in weights.items():
        while key.startswith(_WRAPPERS):
            key = key.removeprefix(_WRAPPERS[0]).removeprefix(_WRAPPERS[1])
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
    return out


def backbone_weights(path: Path, checkpoint: Any, weights: str = "student") -> dict[str, torch.Tensor]:
    """The backbone state dict of a read checkpoint: an nnssl one's ``network_weights``, or the
    ``backbone.*`` entries of a run checkpoint's ``student`` (or ``teacher``).

    >>> backbone_weights(Path("x.pth"), {"network_weights": {"module.w": torch.ones(1)}})
    {'w': tensor([1.])}
    """
    if isinstance(checkpoint, dict) and "network_weights" in checkpoint:
        return strip_wrappers(checkpoint["network_weights"])
    if isinstance(checkpoint, dict) and weights in checkpoint:
        return strip_wrappers(checkpoint[weights], "backbone.")
    raise ValueError(f"{path}: neither an nnssl checkpoint (network_weights) nor a trainers.cva checkpoint "
                     f"({weights})")
