"""One record per backbone: everything the trainers need to know about an architecture, in one place.

A record names how to build the network, which patch sizes it takes, what it costs in memory, how the
reference optimises it, how it is exported for nnU-Net / nnssl and how its features are read. The
trainer (``resources``, ``optim``, ``method``, ``networks``), the export and the probe all read the
record, so adding an architecture is one :class:`Architecture` and one :func:`register` call::

    register(Architecture("my-unet", build=my_builder, patch_multiple=16, params=3_000_000,
                          bytes_per_voxel=1e3, optimizer="adamw", clip_grad=12.0,
                          export_class="ResidualEncoderUNet", export_kwargs=lambda: MY_KWARGS))

Light at import (no torch): ``--help`` and ``--dry-run`` list the names from here; builders import
torch when called.

>>> get("resenc-l").patch_multiple, get("primus-m").optimizer, get("tiny").clip_grad
(32, 'adamw', 12.0)
>>> get("tiny-cpu")
Traceback (most recent call last):
...
ValueError: unknown architecture 'tiny-cpu' (did you mean 'tiny'?); choose one of resenc-l, primus-m, tiny
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Architecture", "register", "get", "names", "build_backbone", "RESIDUAL_PLAN_KEYS", "PRIMUS_PLAN_KEYS"]

#: Where a residual U-Net's encoder, stem and input projection live in its state dict (nnssl's plan fields).
RESIDUAL_PLAN_KEYS = {"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
                      "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
                      "key_to_lpe": None}
PRIMUS_PLAN_KEYS = {"key_to_encoder": "eva", "key_to_stem": "down_projection",
                    "keys_to_in_proj": ["down_projection.proj"], "key_to_lpe": "eva.pos_embed"}


@dataclass(frozen=True)
class Architecture:
    """A backbone the trainers can build, train, export and probe.

    ``build(patch_size, in_channels, out_channels, drop_path)`` returns the network (the backbone the
    run trains and exports). ``patch_multiple``: each patch axis must be a multiple of it (the encoder's
    total stride). ``params`` and ``bytes_per_voxel`` feed the memory estimate (activations per view voxel,
    measured by ``benchmarks/train_step.py``); ``large`` ones are refused on a CPU without ``--force``.
    ``optimizer`` and ``clip_grad``: the reference's defaults. ``feature_channels``: the width of the pooled
    features the CVA heads take (all encoder stages; a ViT's token width). ``export_class`` is nnssl's
    ``arch_class_name``; ``export_kwargs()`` its ``arch_kwargs`` (None: a class nnssl builds by name);
    ``plan_keys`` where encoder, stem and positional embedding live in the weights. ``token``: an MAE
    must hide whole tokens of this edge (a ViT's patch embedding), else None. ``windowed``: the probe
    runs it over windows of its training patch (a learned positional embedding fixes its input size).
    ``citation_name`` and ``citations`` (APA): the export's architecture citation record (nnssl's format).
    """

    name: str
    build: Callable[[Sequence[int], int, int, float], Any]
    patch_multiple: int
    params: int
    bytes_per_voxel: float
    optimizer: str
    clip_grad: float
    feature_channels: int
    export_class: str
    export_kwargs: Callable[[], dict] | None = None
    plan_keys: Mapping[str, Any] = field(default_factory=lambda: dict(RESIDUAL_PLAN_KEYS))
    large: bool = False
    token: int | None = None
    windowed: bool = False
    citation_name: str = ""
    citations: tuple[str, ...] = ()


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add (or replace) ``arch`` under its name; returns it."""
    _REGISTRY[arch.name] = arch
    return arch


def names() -> tuple[str, ...]:
    """The registered architectures' names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Architecture:
    """The record of ``name``; ``ValueError`` (one line, with a close match) when none is registered."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown architecture {name!r}{hint}; choose one of {', '.join(names())}")
    return _REGISTRY[name]


def build_backbone(arch: str, patch_size: Sequence[int], in_channels: int = 1, out_channels: int = 1,
                   drop_path_rate: float = 0.0) -> Any:
    """Build ``arch`` (a registered name) for inputs of ``patch_size``: the record's builder.

    >>> type(build_backbone("tiny", (16, 16, 16))).__name__
    'ResidualEncoderUNet'
    """
    return get(arch).build(tuple(patch_size), in_channels, out_channels, drop_path_rate)


def _resenc_l(patch_size: Sequence[int], in_channels: int, out_channels: int, drop_path: float):
    from trainers.networks import resenc_l

    return resenc_l(in_channels, out_channels)


def _primus_m(patch_size: Sequence[int], in_channels: int, out_channels: int, drop_path: float):
    from trainers.networks import primus_m_mae  # with nnssl's MAE decoder and mask token (trainers.primus_mae)

    return primus_m_mae(in_channels, out_channels, patch_size, drop_path)


def _tiny(patch_size: Sequence[int], in_channels: int, out_channels: int, drop_path: float):
    from trainers.networks import tiny

    return tiny(in_channels, out_channels)


def _tiny_kwargs() -> dict:
    from trainers.networks import TINY_KWARGS

    return dict(TINY_KWARGS)


RESENC = ("Isensee, F., Wald, T., Ulrich, C., Baumgartner, M., Roy, S., Maier-Hein, K., & Jäger, P. F. (2024). "
          "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation. MICCAI 2024. "
          "arXiv:2404.09556.")
PRIMUS = ("Wald, T., Roy, S., Isensee, F., Ulrich, C., Ziegler, S., Trofimova, D., Stock, R., Baumgartner, M., "
          "Köhler, G., & Maier-Hein, K. (2025). Primus: Enforcing Attention Usage for 3D Medical Image "
          "Segmentation. arXiv:2503.01835.")

# Footprints: the measured peak RSS of benchmarks/train_step.py (batch 1, 64³, MAE + CVA + NT-Xent: ResEnc-L
# 4.5 GiB, Primus-M 6.6 GiB on a CPU) less the weights and ~0.5 GiB of runtime; tiny: 770 B per voxel between 64³
# and 96³ (tiny_cpu, batch 2: 1.3 and 3.2 GB peak). Optimisers and clips: nnssl's
# AbstractTrainer (SGD, clip 12) for residual U-Nets, BaseEvaMAETrainer (AdamW, clip 1) for Primus.
register(Architecture("resenc-l", _resenc_l, patch_multiple=32, params=102_348_965, bytes_per_voxel=4.3e3,
                      optimizer="sgd", clip_grad=12.0, feature_channels=1120, export_class="ResEncL", large=True,
                      citation_name="ResEnc-L", citations=(RESENC,)))
register(Architecture("primus-m", _primus_m, patch_multiple=8, params=151_786_529, bytes_per_voxel=6.7e3,
                      optimizer="adamw", clip_grad=1.0, feature_channels=864, export_class="PrimusM", plan_keys=PRIMUS_PLAN_KEYS,
                      large=True, token=8, windowed=True, citation_name="Primus-M", citations=(PRIMUS,)))
register(Architecture("tiny", _tiny, patch_multiple=8, params=500_000, bytes_per_voxel=0.8e3, optimizer="adamw",
                      clip_grad=12.0, feature_channels=120, export_class="ResidualEncoderUNet", export_kwargs=_tiny_kwargs,
                      citation_name="ResidualEncoderUNet (openmind-prep tiny)", citations=(RESENC,)))
