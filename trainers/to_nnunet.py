"""Our export for stock nnU-Net v2 (PyPI ``nnunetv2``): a plans file that builds our network, and weights
its ``-pretrained_weights`` accepts.

    python -m trainers.to_nnunet runs/cva/export.pth --dataset $nnUNet_raw/Dataset042_Stroke --out to_nnunet

writes ``OUT/plans.json`` (copy it into ``$nnUNet_preprocessed/Dataset042_Stroke/`` under its
``plans_name``, with the raw ``dataset.json`` beside it) and ``OUT/pretrained_weights.pth``; the commands to run next are printed (and in
``docs/finetune.md``, "The nnU-Net route").

* **Plans.** One ``3d_fullres`` configuration as our pretraining saw the data (nnssl's ``onemmiso``:
  1 mm isotropic, z-score per image, cubic resampling, separate z above 3:1), the pretraining patch, and
  an ``architecture`` block with our ``ResidualEncoderUNet`` (``network_class_name``, ``arch_kwargs``,
  ``_kw_requires_import``, as nnU-Net's ``get_network_from_plans`` reads it). The median shape is read
  from the raw images' headers; labels and channels from ``dataset.json``.
* **Weights.** ``{"network_weights": ...}`` with every key of the export: nnU-Net's
  ``load_pretrained_weights`` requires each network key but ``.seg_layers.`` with its shape. A dataset
  with N input channels gets the 1-channel stem repeated N times and divided by N (the fork's rule).

Residual U-Nets only (``tiny``, ``ResEncL``): stock nnU-Net builds Primus from its own trainer classes,
not from a plans file; a Primus-M export goes the fork's way (``nnUNetv2_preprocess_like_nnssl``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

__all__ = ["ToNnunetError", "read_raw_dataset", "nnunet_plans", "pretrained_weights", "main"]

PLANS_NAME = "nnUNetPlans_openmind"


class ToNnunetError(ValueError):
    """An export or raw dataset this command cannot use; the message is one line naming the file."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("trainers.to_nnunet", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("export", type=Path, help="An nnssl-format export (trainers.cva --export) of a residual U-Net.")
    p.add_argument("--dataset", type=Path, required=True,
                   help="The nnU-Net raw dataset folder (DatasetXXX_Name with dataset.json and imagesTr/).")
    p.add_argument("--out", type=Path, required=True, help="Folder for plans.json and pretrained_weights.pth.")
    p.add_argument("--plans-name", default=PLANS_NAME, help="The plans identifier (nnUNetv2_train -p NAME).")
    p.add_argument("--batch-size", type=int, default=2, help="The configuration's batch size (nnU-Net's default 2).")
    return p


def read_raw_dataset(folder: Path) -> dict:
    """``dataset.json`` of an nnU-Net raw dataset plus ``median_shape_1mm`` (z, y, x) over ``imagesTr`` channel 0.

    Shapes come from the headers (SimpleITK's z, y, x order: the NIfTI axes reversed), at 1 mm.
    """
    import nibabel as nib

    meta_file = folder / "dataset.json"
    try:
        meta = json.loads(meta_file.read_text())
        channels, labels, ending = meta["channel_names"], meta["labels"], meta["file_ending"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ToNnunetError(f"{meta_file}: not an nnU-Net dataset.json ({type(e).__name__}: {e})") from None
    if not isinstance(channels, dict) or not channels or not isinstance(labels, dict) or "background" not in labels:
        raise ToNnunetError(f"{meta_file}: channel_names must be a non-empty mapping and labels must name background")
    shapes = []
    for image in sorted((folder / "imagesTr").glob(f"*_0000{ending}")):
        try:
            header = nib.load(image).header
        except Exception as e:  # noqa: BLE001 - any unreadable image is one line
            raise ToNnunetError(f"{image}: not readable ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        shape, zooms = header.get_data_shape()[:3], header.get_zooms()[:3]
        shapes.append([round(float(n) * float(s)) for n, s in zip(shape, zooms)][::-1])
    if not shapes:
        raise ToNnunetError(f"{folder / 'imagesTr'}: no *_0000{ending} images")
    median = [int(statistics.median(axis)) for axis in zip(*shapes)]
    return {"name": folder.name, "channels": len(channels), "labels": labels, "median_shape_1mm": median,
            "cases": len(shapes)}


def _architecture(plan: dict, path: Path) -> dict:
    """The plans' ``architecture`` block for the export's residual U-Net."""
    from trainers.networks import RESENC_L_KWARGS

    arch = plan.get("architecture_plans") or {}
    name = arch.get("arch_class_name")
    if name == "ResEncL":
        kwargs = {k: f"{v.__module__}.{v.__name__}" if isinstance(v, type) else v for k, v in RESENC_L_KWARGS.items()}
        imports = [k for k, v in RESENC_L_KWARGS.items() if isinstance(v, type)]
    elif isinstance(name, str) and name.rsplit(".", 1)[-1] == "ResidualEncoderUNet":
        kwargs, imports = dict(arch.get("arch_kwargs") or {}), list(arch.get("arch_kwargs_requiring_import") or [])
    else:
        raise ToNnunetError(f"{path}: architecture {name!r}: stock nnU-Net builds only U-Nets from a plans file "
                            "(Primus: use the fork's nnUNetv2_preprocess_like_nnssl, docs/finetune.md)")
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": kwargs, "_kw_requires_import": imports}


def nnunet_plans(plan: dict, dataset: dict, path: Path, *, plans_name: str = PLANS_NAME, batch_size: int = 2) -> dict:
    """nnU-Net v2 plans (one ``3d_fullres`` configuration) that preprocess as our pretraining did and build
    the export's network.

    >>> from trainers.export import adaptation_plan
    >>> ds = {"name": "Dataset001_X", "channels": 1, "labels": {"background": 0, "a": 1}, "median_shape_1mm": [90, 100, 80]}
    >>> c = nnunet_plans(adaptation_plan("tiny", (32, 32, 32)), ds, Path("e.pth"))["configurations"]["3d_fullres"]
    >>> c["patch_size"], c["spacing"], c["architecture"]["arch_kwargs"]["n_stages"]
    ([32, 32, 32], [1.0, 1.0, 1.0], 4)
    """
    arch = _architecture(plan, path)
    try:
        pretrain = next(iter(plan["pretrain_plan"]["configurations"].values()))
        spacing, patch = [float(s) for s in pretrain["spacing"]], [int(p) for p in pretrain["patch_size"]]
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        raise ToNnunetError(f"{path}: nnssl adaptation plan lacks the pretraining spacing / patch ({e})") from None
    channels = dataset["channels"]
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": f"{plans_name}_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size, "patch_size": patch, "median_image_size_in_voxels": dataset["median_shape_1mm"],
        "spacing": spacing, "normalization_schemes": ["ZScoreNormalization"] * channels,
        "use_mask_for_norm": [False] * channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resample,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return {
        "dataset_name": dataset["name"], "plans_name": plans_name,
        "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": dataset["median_shape_1mm"],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "openmind-prep trainers.to_nnunet",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 0.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
                     "percentile_99_5": 0.0, "std": 1.0} for c in range(channels)},  # read only by CT normalisation
    }


def pretrained_weights(ck: dict, channels: int, path: Path) -> dict:
    """``{"network_weights": ...}``: the export's weights, the stem's input projection repeated over ``channels``
    input channels and divided by their number (``keys_to_in_proj``, as the fork adapts a 1-channel stem)."""
    import torch

    weights, plan = ck.get("network_weights"), ck.get("nnssl_adaptation_plan") or {}
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ToNnunetError(f"{path}: network_weights is not a state dict (names → tensors)")
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ToNnunetError(f"{path}: weight {bad} holds NaN or inf")
    weights = dict(weights)
    pt_channels = int(plan.get("pretrain_num_input_channels", 1))
    if channels != pt_channels:
        if pt_channels != 1:
            raise ToNnunetError(f"{path}: pretrained on {pt_channels} channels; only a 1-channel stem adapts "
                                f"to the dataset's {channels}")
        ends = tuple(f"{key}.weight" for key in plan.get("keys_to_in_proj") or [])
        for key, w in weights.items():  # the decoder holds the encoder too: decoder.encoder.stem...
            if key.startswith(ends) or key.endswith(tuple("." + e for e in ends)):
                weights[key] = w.repeat(1, channels, *[1] * (w.dim() - 2)) / channels
    return {"network_weights": weights}


def _next_steps(out: Path, plans: dict, raw: Path) -> list[str]:
    name, ds = plans["plans_name"], plans["dataset_name"]
    return [f"wrote {out / 'plans.json'} (plans {name}) and {out / 'pretrained_weights.pth'}; next:",
            f"  nnUNetv2_extract_fingerprint -d {ds[7:10]}",
            f"  cp {out / 'plans.json'} $nnUNet_preprocessed/{ds}/{name}.json",
            f"  cp {raw / 'dataset.json'} $nnUNet_preprocessed/{ds}/",
            f"  nnUNetv2_preprocess -d {ds[7:10]} -plans_name {name} -c 3d_fullres",
            f"  nnUNetv2_train {ds[7:10]} 3d_fullres 0 -p {name} -pretrained_weights {out / 'pretrained_weights.pth'}"]


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    parser.error = lambda message: (print(f"trainers.to_nnunet: error: {message}", file=sys.stderr), sys.exit(2))
    args = parser.parse_args(argv)
    import torch

    from openmind_prep.core import atomic
    from trainers.weights import read_checkpoint

    try:
        path, ck = read_checkpoint(args.export)
        if not isinstance(ck, dict) or "nnssl_adaptation_plan" not in ck:
            raise ToNnunetError(f"{path}: not an nnssl-format export (no nnssl_adaptation_plan)")
        if not (args.dataset / "dataset.json").is_file():
            raise ToNnunetError(f"--dataset {args.dataset}: no dataset.json (an nnU-Net raw dataset folder?)")
        dataset = read_raw_dataset(args.dataset)
        plans = nnunet_plans(ck["nnssl_adaptation_plan"], dataset, path, plans_name=args.plans_name,
                             batch_size=args.batch_size)
        weights = pretrained_weights(ck, dataset["channels"], path)
    except ValueError as e:  # ToNnunetError and read_checkpoint's one line
        print(f"trainers.to_nnunet: error: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "plans.json", json.dumps(plans, indent=2) + "\n")
    atomic.write_with(args.out / "pretrained_weights.pth", lambda tmp: torch.save(weights, tmp))
    print("\n".join(_next_steps(args.out, plans, args.dataset)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
