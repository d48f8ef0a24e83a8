"""Export a pretrained backbone in nnssl's checkpoint format, with its adaptation plan.

nnssl saves ``{"network_weights": state_dict, "nnssl_adaptation_plan": plan, ...}`` and nnU-Net's
pretrained-weights fine-tuning (``nnUNetv2_preprocess_like_nnssl`` and ``PretrainedTrainer`` of the
nnssl-aware nnU-Net) reads exactly these fields: the plan names the architecture
(``architecture_plans.arch_class_name``, ``"ResEncL"`` / ``"PrimusM"`` built from its own registry,
or ``"ResidualEncoderUNet"`` plus ``arch_kwargs``), the pretraining spacing and patch size
(``pretrain_plan.configurations.<name>``), the number of input channels and where encoder, stem,
input projection and learnable positional embedding live in ``network_weights``. The weights are
the backbone's full state dict (encoder + decoder), so plain nnU-Net ``load_pretrained_weights``
also accepts them (every key but ``seg_layers`` present with its shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from trainers import architectures

__all__ = ["adaptation_plan", "citations", "nnssl_checkpoint", "save_nnssl_checkpoint"]


_OPENMIND = ("Wald, T., Ulrich, C., Suprijadi, J., Ziegler, S., Nohel, M., Peretzke, R., Köhler, G., & "
             "Maier-Hein, K. H. (2024). An OpenMind for 3D medical vision self-supervised learning. "
             "arXiv:2412.17041.")
_CVA = ("Vaish, P., Meister, F., Heimann, T., Brune, C., & Wolterink, J. M. (2025). Consistent View Alignment "
        "Improves Foundation Models for 3D Medical Image Segmentation. arXiv:2509.13846.")
def citations(arch: str) -> list[dict]:
    """nnssl's citation records (``type``, ``name``, ``apa_citations``) for an export of ``arch``.

    The fork's ``PretrainedTrainer.print_citations`` sorts them by ``type`` and prints
    ``"{type} used '{name}'"`` followed by each APA citation; ``nnUNetv2_preprocess_like_nnssl`` copies
    them into the plans' ``pretrain_info`` (JSON), so every value is a plain string.

    >>> [(c["type"], c["name"]) for c in citations("primus-m")]
    [('Architecture', 'Primus-M'), ('Pre-training Method', 'Consistent View Alignment (CVA)'), \
('Pre-training Dataset', 'OpenMind'), ('Pre-training Framework', 'nnssl')]
    """
    record = architectures.get(arch)  # the architecture's name and paper are its record's
    return [{"type": "Architecture", "name": record.citation_name, "apa_citations": list(record.citations)},
            {"type": "Pre-training Method", "name": "Consistent View Alignment (CVA)", "apa_citations": [_CVA]},
            {"type": "Pre-training Dataset", "name": "OpenMind", "apa_citations": [_OPENMIND]},
            {"type": "Pre-training Framework", "name": "nnssl", "apa_citations": [_OPENMIND]}]


def _dotted(value: Any) -> Any:
    """Module classes as nnssl serialises them ("torch.nn.modules.conv.Conv3d"); other values unchanged."""
    return f"{value.__module__}.{value.__name__}" if isinstance(value, type) else value


def _arch_plans(arch: str) -> dict:
    """nnssl's ``architecture_plans`` of ``arch``'s record: a class nnssl builds by name, or one plus its kwargs."""
    record = architectures.get(arch)
    if record.export_kwargs is None:
        return {"arch_class_name": record.export_class, "arch_kwargs": None, "arch_kwargs_requiring_import": None}
    raw = record.export_kwargs()
    return {"arch_class_name": record.export_class, "arch_kwargs": {k: _dotted(v) for k, v in raw.items()},
            "arch_kwargs_requiring_import": [k for k, v in raw.items() if isinstance(v, type)]}


def adaptation_plan(arch: str, patch_size: Sequence[int], *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    in_channels: int = 1, dataset_name: str = "Dataset001_OpenMind",
                    downstream_patch_size: Sequence[int] | None = None) -> dict:
    """The serialised ``AdaptationPlan`` nnssl stores in its checkpoints, for our ``arch``.

    ``recommended_downstream_patchsize`` defaults to the trained ``patch_size``: nnU-Net's adaptation
    (nnssl's ``PretrainedTrainer``, the fork's ``load_pretrained_weights``) keeps a Primus' learned
    positional embedding only when the fine-tuning patch equals it, and fine-tunes at that patch.

    >>> p = adaptation_plan("resenc-l", (128, 128, 128))
    >>> p["architecture_plans"]["arch_class_name"], p["key_to_encoder"], p["key_to_stem"]
    ('ResEncL', 'encoder.stages', 'encoder.stem')
    >>> adaptation_plan("primus-m", (96, 96, 96))["key_to_lpe"], adaptation_plan("primus-m", (96, 96, 96))["recommended_downstream_patchsize"]
    ('eva.pos_embed', [96, 96, 96])
    """
    keys = dict(architectures.get(arch).plan_keys)
    configuration = {
        "data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"] * in_channels,
        "use_mask_for_norm": [False] * in_channels, "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "spacing": [float(s) for s in spacing], "patch_size": [int(p) for p in patch_size],
    }
    pretrain_plan = {
        "dataset_name": dataset_name, "plans_name": "nnsslPlans",
        "original_median_spacing_after_transp": [float(s) for s in spacing],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"onemmiso": configuration}, "experiment_planner_used": "openmind-prep trainers.cva",
    }
    return {"architecture_plans": _arch_plans(arch), "pretrain_plan": pretrain_plan,
            "pretrain_num_input_channels": in_channels,
            "recommended_downstream_patchsize": [int(p) for p in (downstream_patch_size or patch_size)], **keys}


def nnssl_checkpoint(backbone: nn.Module, arch: str, patch_size: Sequence[int], config: dict | None = None,
                     **plan_kwargs: Any) -> dict:
    """The checkpoint dict: CPU ``network_weights``, ``nnssl_adaptation_plan`` and our run config.

    >>> from trainers.networks import tiny
    >>> ck = nnssl_checkpoint(tiny(), "tiny", (32, 32, 32))
    >>> sorted(ck)[:2], "encoder.stem.convs.0.conv.weight" in ck["network_weights"]
    (['citations', 'init_args'], True)
    """
    weights = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
               for k, v in backbone.state_dict().items()}
    return {
        "network_weights": weights,
        "nnssl_adaptation_plan": adaptation_plan(arch, patch_size, **plan_kwargs),
        "trainer_name": "trainers.cva",
        "init_args": dict(config or {}),
        "citations": citations(arch),
    }


def save_nnssl_checkpoint(path: str | Path, backbone: nn.Module, arch: str, patch_size: Sequence[int],
                          config: dict | None = None, **plan_kwargs: Any) -> Path:
    """Write :func:`nnssl_checkpoint` to ``path`` and its plan to ``adaptation_plan.json`` beside it (as nnssl
    writes one beside its checkpoints), each atomically (temp file, then rename); returns the checkpoint path."""
    import json

    from openmind_prep.core.atomic import write_text, write_with

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = nnssl_checkpoint(backbone, arch, patch_size, config, **plan_kwargs)
    write_with(path, lambda tmp: torch.save(ckpt, tmp))
    write_text(path.with_name("adaptation_plan.json"), json.dumps(ckpt["nnssl_adaptation_plan"], indent=2) + "\n")
    return path
