"""What a training run refuses, one line each: settings that cannot train, numbers that are not finite,
tensors that do not fit (issue 23).

:func:`problems` reads settings by attribute name (a setting left out is not checked), so it takes the
trainer's resolved ``argparse.Namespace`` as well as a frozen settings object; the command line calls it
before anything is built and exits 2 with its first message. :func:`nonfinite` is the loop's check of
each step's loss terms and gradient norm, :func:`nonfinite_key` the check of weights before they are
saved, :func:`mismatch` the check of a checkpoint's tensors against this run's networks.

>>> from argparse import Namespace
>>> problems(Namespace(lr=0.0, temperature=0.0, steps=10**20, region_scale=1e308, patch_size=[32] * 3))
['--lr 0: must be above 0 (a learning rate of 0 trains nothing)', \
'--temperature 0.0: must be above 0 (NT-Xent and C-CVA divide by it)', \
'--steps 100000000000000000000: at most 100000000 (the schedules hold one value per step)', \
'--region-scale 1e+308: regions of more than 65536 voxels per axis (regions are cut to the volume: \
a larger scale reads nothing more)']
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = ["problems", "nonfinite", "nonfinite_key", "mismatch", "optimizer_mismatch", "MAX_STEPS"]

#: Step counts above this are refused: the lr and momentum schedules are arrays of one value per step.
MAX_STEPS = 10**8
MAX_SEED = 2**32 - 1
MAX_REGION = 2**16  # voxels per axis of a read region (65 m at 1 mm)
_INT64 = 2**63 - 1

_FLOATS = ("lr", "min_lr", "weight_decay", "momentum", "clip_grad", "drop_path", "temperature", "mask_ratio",
           "min_overlap", "max_overlap", "region_scale", "recon_weight", "consistency_weight", "contrastive_weight",
           "ema_momentum", "ema_momentum_end")
_STEP_COUNTS = ("steps", "warmup_steps", "ckpt_every", "log_every", "probe_every", "stop_at_step")
_INTS = ("batch_size", "global_batch_size", "mask_block", "align_size", "pool_size", "proj_dim", "num_workers",
         "threads")
_FRACTIONS = ("momentum", "ema_momentum", "ema_momentum_end")  # in [0, 1]
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(settings: Any, name: str) -> Any:
    """The setting ``name``, or None where the object has none (or leaves it to a default)."""
    value = getattr(settings, name, None)
    return None if isinstance(value, bool) else value


def problems(settings: Any) -> list[str]:
    """One line per setting that cannot train (empty: none). Reads attributes by name, skips absent ones.

    >>> from argparse import Namespace
    >>> problems(Namespace(lr=1e-3, weight_decay=float("inf"), device="cuda:x", seed=-1))
    ['--weight-decay inf: not a finite number', '--seed -1: 0 to 4294967295', '--device cuda:x: auto, cpu, cuda or cuda:N']
    >>> problems(Namespace(lr=1e-3, temperature=0.5, steps=1000, device="cuda:7"))
    []
    """
    found = []
    for name in _FLOATS:
        value = _given(settings, name)
        if value is not None and not math.isfinite(value):
            found.append(f"{_flag(name)} {value}: not a finite number")
    lr = _given(settings, "lr")
    if lr is not None and math.isfinite(lr) and lr <= 0:
        found.append(f"--lr {lr:g}: must be above 0 (a learning rate of {lr:g} trains nothing)")
    temperature = _given(settings, "temperature")
    if temperature is not None and math.isfinite(temperature) and temperature <= 0:
        found.append(f"--temperature {temperature}: must be above 0 (NT-Xent and C-CVA divide by it)")
    for name in _FRACTIONS:
        value = _given(settings, name)
        if value is not None and math.isfinite(value) and not 0 <= value <= 1:
            found.append(f"{_flag(name)} {value}: a momentum from 0 to 1")
    for name in _STEP_COUNTS:
        value = _given(settings, name)
        if value is not None and value > MAX_STEPS:
            found.append(f"{_flag(name)} {value}: at most {MAX_STEPS} (the schedules hold one value per step)")
    for name in _INTS:
        value = _given(settings, name)
        if value is not None and value > _INT64:
            found.append(f"{_flag(name)} {value}: beyond a 64-bit integer")
    seed = _given(settings, "seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        found.append(f"--seed {seed}: 0 to {MAX_SEED}")
    scale, patch = _given(settings, "region_scale"), list(getattr(settings, "patch_size", None) or [1])
    if max(patch) > MAX_REGION:
        found.append(f"--patch-size {patch}: at most {MAX_REGION} voxels per axis")
    if scale is not None and math.isfinite(scale) and scale * max(patch) > MAX_REGION:
        found.append(f"--region-scale {scale:g}: regions of more than {MAX_REGION} voxels per axis (regions are cut "
                     "to the volume: a larger scale reads nothing more)")
    device = getattr(settings, "device", None)
    if isinstance(device, str) and not _DEVICE.fullmatch(device):
        found.append(f"--device {device}: auto, cpu, cuda or cuda:N")
    return found


def nonfinite(step: int, terms: Mapping[str, Any], grad_norm: Any) -> str | None:
    """Why step ``step`` must not update the weights: a loss term or the gradient norm that is NaN or infinite.

    >>> nonfinite(3, {"loss": float("nan"), "recon": 0.5, "ntxent": float("nan")}, 1.0)
    'step 3: the loss is not finite (loss = nan, ntxent = nan)'
    >>> nonfinite(3, {"loss": 0.5}, float("inf"))
    'step 3: the gradient is not finite (grad_norm = inf)'
    >>> nonfinite(3, {"loss": 0.5}, 2.0) is None
    True
    """
    values = {name: float(getattr(value, "detach", lambda: value)()) for name, value in terms.items()}
    bad = [f"{name} = {value:g}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        return f"step {step}: the loss is not finite ({', '.join(bad)})"
    if not math.isfinite(float(grad_norm)):
        return f"step {step}: the gradient is not finite (grad_norm = {float(grad_norm):g})"
    return None


def nonfinite_key(state: Mapping[str, Any]) -> str | None:
    """The first floating-point tensor of a state dict holding NaN or ±inf, else None.

    >>> import torch
    >>> nonfinite_key({"a": torch.ones(2), "step": torch.tensor(3), "b": torch.tensor([1.0, float("nan")])})
    'b'
    """
    import torch

    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def mismatch(name: str, expected: Mapping[str, Any], given: Any) -> str | None:
    """How a checkpoint's state dict ``given`` differs from this run's ``expected`` (the first key that is
    missing, extra, not a tensor or of another shape), else None.

    >>> import torch
    >>> mismatch("student", {"w": torch.zeros(8, 1)}, {"w": torch.zeros(4, 1)})
    'student: w is [4, 1] in the checkpoint, [8, 1] in this run'
    >>> mismatch("student", {"w": torch.zeros(1)}, {"w": "x"})
    'student: w is not a tensor in the checkpoint'
    """
    import torch

    if not isinstance(given, Mapping):
        return f"{name}: not a dict of tensors in the checkpoint"
    for key, want in expected.items():
        have = given.get(key)
        if key not in given:
            return f"{name}: {key} is missing from the checkpoint"
        if not torch.is_tensor(have):
            return f"{name}: {key} is not a tensor in the checkpoint"
        if have.shape != want.shape:
            return f"{name}: {key} is {list(have.shape)} in the checkpoint, {list(want.shape)} in this run"
    extra = [k for k in given if k not in expected]
    return f"{name}: {extra[0]} in the checkpoint is not in this run's network" if extra else None


def optimizer_mismatch(optimizer: Any, named: Mapping[str, Any]) -> str | None:
    """The first optimiser state tensor (momentum, Adam moments) whose shape is not its parameter's (a
    wrong-shaped state loads silently and fails inside ``step()``), else None; ``named``: the parameters by name.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.state[w]["momentum_buffer"] = torch.zeros(4)
    >>> optimizer_mismatch(opt, {"w": w})
    'optimizer: momentum_buffer of w is [4] in the checkpoint, [3] in this run'
    """
    import torch

    names = {id(p): n for n, p in named.items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                    return (f"optimizer: {key} of {names.get(id(p), '?')} is {list(value.shape)} in the checkpoint, "
                            f"{list(p.shape)} in this run")
    return None
