"""Load a backbone for probing: a ``trainers.cva`` run folder / ``checkpoint.pt``, or an nnssl export.

* Run checkpoint (``{"student", "teacher", "config", ...}``): the ``backbone.*`` weights of the
  student (or teacher), architecture and patch size from the stored config.
* nnssl-format export (``{"network_weights", "nnssl_adaptation_plan"}``, ours from
  :mod:`trainers.export` or nnssl's): ``architecture_plans.arch_class_name`` ``ResEncL`` /
  ``PrimusM`` / ``ResidualEncoderUNet`` (+ ``arch_kwargs``; the classes it names must be one of a
  few ``torch.nn`` layers: a plan is data, never code), patch size from the pretraining plan.

Everything is read with ``torch.load(weights_only=True)``; problems raise :class:`ProbeInputError`
with one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trainers import architectures
from trainers.weights import read_checkpoint, strip_wrappers

__all__ = ["ProbeInputError", "LoadedBackbone", "load_backbone", "build_like"]

_LAYERS = {f"{c.__module__}.{c.__name__}": c for c in (
    nn.Conv3d, nn.Conv2d, nn.InstanceNorm3d, nn.BatchNorm3d, nn.LeakyReLU, nn.ReLU, nn.GELU, nn.Dropout3d)}


class ProbeInputError(ValueError):
    """A run / checkpoint / export that cannot be probed; the message is one line naming the file."""


@dataclass(frozen=True)
class LoadedBackbone:
    """The network (eval mode, CPU), how to rebuild it, and where it came from."""

    network: nn.Module
    arch: str
    patch_size: tuple[int, int, int]
    kwargs: dict
    source: str


_INT_KWARGS = ("n_stages",)
_LIST_KWARGS = ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage", "n_conv_per_stage_decoder")


def _state_dict(path: Path, weights: object, key: str) -> dict:
    """``weights`` if it is a state dict (names → tensors); else one line naming ``key`` in ``path``.

    >>> _state_dict(Path("m.pth"), [1, 2], "network_weights")
    Traceback (most recent call last):
    ...
    trainers.probe_io.ProbeInputError: m.pth: network_weights is a list, not a state dict (names → tensors)
    """
    import torch

    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise ProbeInputError(f"{path}: {key} is a {type(weights).__name__}, not a state dict (names → tensors)")
    return weights


def _check_arch_kwargs(path: Path, kwargs: dict) -> None:
    """The plan's U-Net ``arch_kwargs`` have the types the constructor needs (a plan is data: check it).

    >>> _check_arch_kwargs(Path("m.pth"), {"n_stages": "6"})
    Traceback (most recent call last):
    ...
    trainers.probe_io.ProbeInputError: m.pth: arch_kwargs n_stages='6' is a str, not an integer
    """
    for key in _INT_KWARGS:
        if key in kwargs and (isinstance(kwargs[key], bool) or not isinstance(kwargs[key], int)):
            raise ProbeInputError(f"{path}: arch_kwargs {key}={kwargs[key]!r} is a {type(kwargs[key]).__name__}, "
                                  "not an integer")
    for key in _LIST_KWARGS:
        if key in kwargs and not isinstance(kwargs[key], (list, tuple)):
            raise ProbeInputError(f"{path}: arch_kwargs {key}={kwargs[key]!r} is a {type(kwargs[key]).__name__}, "
                                  "not a list")


def _first_non_finite(network: nn.Module) -> str | None:
    """The first parameter or buffer holding NaN or ±inf (None: all finite)."""
    import torch

    for key, value in network.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def _out_channels(weights: dict) -> int:
    heads = [k for k in weights if k.endswith(".bias") and k.startswith(("decoder.seg_layers.", "up_projection."))]
    return int(weights[heads[-1]].shape[0]) if heads else 1


def build_like(arch: str, patch_size: tuple[int, ...], kwargs: dict) -> nn.Module:
    """A freshly initialised network of the same architecture (the random-init baseline).

    >>> type(build_like("tiny", (32, 32, 32), {"out_channels": 4})).__name__
    'ResidualEncoderUNet'
    """
    from trainers.architectures import build_backbone

    if arch == "ResidualEncoderUNet":
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

        return ResidualEncoderUNet(**kwargs)
    if arch == "primus-m" and not kwargs.get("mae", True):  # plain Primus-M weights (nnssl's export, no MAE decoder)
        from trainers.networks import primus_m

        return primus_m(kwargs.get("in_channels", 1), kwargs.get("out_channels", 1), patch_size)
    return build_backbone(arch, patch_size, kwargs.get("in_channels", 1), kwargs.get("out_channels", 1))


def _from_export(ck: dict, path: Path) -> tuple[str, tuple[int, ...], dict, dict]:
    plan = ck["nnssl_adaptation_plan"]
    weights = strip_wrappers(_state_dict(path, ck["network_weights"], "network_weights"))
    try:
        arch_plans = plan["architecture_plans"]
        configuration = next(iter(plan["pretrain_plan"]["configurations"].values()))
        patch = tuple(int(p) for p in configuration["patch_size"])
        in_channels = int(plan.get("pretrain_num_input_channels", 1))
        name = arch_plans["arch_class_name"]
    except (KeyError, TypeError, StopIteration, ValueError) as e:
        raise ProbeInputError(f"{path}: nnssl adaptation plan lacks {e} (architecture_plans / pretrain_plan)") from None
    io = {"in_channels": in_channels, "out_channels": _out_channels(weights)}
    records = [architectures.get(n) for n in architectures.names()]
    by_class = {r.export_class: r.name for r in records if r.export_kwargs is None}
    if name in by_class:
        return by_class[name], patch, io, weights
    if name.rsplit(".", 1)[-1] != "ResidualEncoderUNet":
        raise ProbeInputError(f"{path}: architecture {name!r} is not one of {', '.join(by_class)}, ResidualEncoderUNet")
    kwargs = arch_plans.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ProbeInputError(f"{path}: arch_kwargs is a {type(kwargs).__name__}, not a mapping")
    kwargs = dict(kwargs)
    _check_arch_kwargs(path, kwargs)
    for key in arch_plans.get("arch_kwargs_requiring_import") or []:
        if kwargs.get(key) is not None:
            if kwargs[key] not in _LAYERS:
                raise ProbeInputError(f"{path}: arch_kwargs {key}={kwargs[key]!r} is not an allowed torch.nn layer")
            kwargs[key] = _LAYERS[kwargs[key]]
    for record in records:  # a registered architecture exported with its kwargs (the tiny net, ...)
        if record.export_kwargs is not None and kwargs == record.export_kwargs():
            return record.name, patch, io, weights
    kwargs = {**kwargs, "input_channels": in_channels, "num_classes": io["out_channels"], "deep_supervision": False}
    return "ResidualEncoderUNet", patch, kwargs, weights


def load_backbone(path: str | Path, weights: str = "student") -> LoadedBackbone:
    """Rebuild the backbone stored at ``path`` (run folder, ``checkpoint.pt`` or nnssl export).

    >>> import tempfile
    >>> from trainers.export import save_nnssl_checkpoint
    >>> from trainers.networks import tiny
    >>> p = save_nnssl_checkpoint(Path(tempfile.mkdtemp()) / "m.pth", tiny(), "tiny", (32, 32, 32))
    >>> b = load_backbone(p); b.arch, b.patch_size
    ('tiny', (32, 32, 32))
    >>> load_backbone(p.parent / "nope.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trainers.probe_io.ProbeInputError: .../nope.pth: no such file or directory
    """
    try:
        path, ck = read_checkpoint(path)
    except ValueError as e:
        raise ProbeInputError(str(e)) from None
    if isinstance(ck, dict) and "network_weights" in ck and "nnssl_adaptation_plan" in ck:
        arch, patch, kwargs, state = _from_export(ck, path)
        source = "nnssl export"
    elif isinstance(ck, dict) and "config" in ck and weights in ck:
        config = ck["config"]
        arch, patch = config.get("arch"), tuple(int(p) for p in config.get("patch_size", ()))
        state = strip_wrappers(_state_dict(path, ck[weights], weights), "backbone.")
        kwargs, source = {"out_channels": _out_channels(state)}, f"trainers.cva checkpoint ({weights}, step {ck.get('step')})"
    else:
        raise ProbeInputError(f"{path}: neither a trainers.cva checkpoint nor an nnssl export "
                              "(expected 'student'+'config' or 'network_weights'+'nnssl_adaptation_plan')")
    if arch == "primus-m":  # our runs hold nnssl's Primus MAE (with its decoder); nnssl's exports plain Primus-M
        kwargs = {**kwargs, "mae": any(k.startswith("decoder.") for k in state)}
    try:
        network = build_like(arch, patch, kwargs)
        network.load_state_dict(state)
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        raise ProbeInputError(f"{path}: weights do not fit {arch}: {' '.join(str(e).split())[:200]}") from None
    bad = _first_non_finite(network)
    if bad is not None:
        raise ProbeInputError(f"{path}: weight {bad} holds NaN or inf; a probe of it would score nothing")
    return LoadedBackbone(network.eval(), arch, patch, kwargs, source)
