"""``python -m trainers.to_nnunet``: plans that stock nnU-Net v2 turns into our network, and weights its
``-pretrained_weights`` accepts. nnU-Net's ``get_network_from_plans`` and ``load_pretrained_weights``
(``nnunetv2/run/load_pretrained_weights.py``) are re-typed here and run on what the command writes."""

from __future__ import annotations

import json
import pydoc
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainers import export, networks, to_nnunet

DOCS = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"


def _raw_dataset(root: Path, channels: int = 2) -> Path:
    """A tiny nnU-Net raw dataset: two cases, ``channels`` images each (2 mm and 2 × 2 × 3 mm), 4 labels."""
    import nibabel as nib

    folder = root / "Dataset042_Tiny"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case, zooms in (("a", (2.0, 2.0, 2.0)), ("b", (2.0, 2.0, 3.0))):
        for c in range(channels):
            nib.save(nib.Nifti1Image(rng.random((20, 24, 16), dtype=np.float32), np.diag([*zooms, 1.0])),
                     folder / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(rng.integers(0, 4, (20, 24, 16), dtype=np.uint8), np.diag([*zooms, 1.0])),
                 folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"ch{c}" for c in range(channels)}, "file_ending": ".nii.gz", "numTraining": 2,
        "labels": {"background": 0, "a": 1, "b": 2, "c": 3}}))
    return folder


def _nnunet_network_from_plans(plans: dict, channels: int, classes: int, device: str = "cpu") -> nn.Module:
    """nnU-Net v2's ``get_network_from_plans`` (as ``nnUNetTrainer.build_network_architecture`` calls it, deep
    supervision on), re-typed: pydoc.locate the class and the ``_kw_requires_import`` entries."""
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    kwargs = dict(**arch["arch_kwargs"])
    for k in arch["_kw_requires_import"]:
        if kwargs[k] is not None:
            kwargs[k] = pydoc.locate(kwargs[k])
    kwargs["deep_supervision"] = True
    with torch.device("meta"):
        net = pydoc.locate(arch["network_class_name"])(input_channels=channels, num_classes=classes, **kwargs)
    return net.to_empty(device=device)


def _nnunet_load_pretrained_weights(network: nn.Module, weights_file) -> None:
    """nnU-Net v2's ``load_pretrained_weights``, re-typed: every key but ``.seg_layers.`` in the file with its shape."""
    pretrained = torch.load(weights_file, weights_only=True)["network_weights"]
    skip = [".seg_layers."]
    model = network.state_dict()
    for key in model:
        if all(s not in key for s in skip):
            assert key in pretrained, f"Key {key} is missing in the pretrained model weights"
            assert model[key].shape == pretrained[key].shape, key
    model.update({k: v for k, v in pretrained.items() if k in model and all(s not in k for s in skip)})
    network.load_state_dict(model)


def test_tiny_export_builds_and_loads_in_stock_nnunet_with_two_channels(tmp_path, capsys):
    torch.manual_seed(0)
    ours = networks.tiny()
    path = export.save_nnssl_checkpoint(tmp_path / "export.pth", ours, "tiny", (32, 32, 32))
    dataset = _raw_dataset(tmp_path / "raw")
    assert to_nnunet.main([str(path), "--dataset", str(dataset), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "nnUNetv2_train 042 3d_fullres 0 -p nnUNetPlans_openmind -pretrained_weights" in printed
    assert f"cp {dataset / 'dataset.json'} $nnUNet_preprocessed/Dataset042_Tiny/" in printed
    plans = json.loads((tmp_path / "out" / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["patch_size"] == [32, 32, 32] and config["spacing"] == [1.0, 1.0, 1.0]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] * 2
    assert config["median_image_size_in_voxels"] == [40, 48, 40]  # z y x at 1 mm: median(16·2, 16·3), 24·2, 20·2
    assert plans["dataset_name"] == "Dataset042_Tiny" and plans["plans_name"] == "nnUNetPlans_openmind"
    net = _nnunet_network_from_plans(plans, channels=2, classes=4)
    _nnunet_load_pretrained_weights(net, tmp_path / "out" / "pretrained_weights.pth")
    theirs = net.state_dict()
    for k, v in ours.state_dict().items():
        if k.endswith(("encoder.stem.convs.0.conv.weight", "encoder.stem.convs.0.all_modules.0.weight")):
            torch.testing.assert_close(theirs[k], v.repeat(1, 2, 1, 1, 1) / 2)
        elif ".seg_layers." not in k:
            assert torch.equal(theirs[k], v), k
    y = net(torch.zeros(1, 2, 32, 32, 32))
    assert isinstance(y, (list, tuple)) and y[0].shape == (1, 4, 32, 32, 32)  # deep supervision, 4 classes


def test_resenc_l_plans_build_resenc_l_and_its_weights_load():
    with torch.device("meta"):
        ours = networks.resenc_l()
    ours = ours.to_empty(device="cpu")
    with torch.no_grad():
        for i, t in enumerate(ours.state_dict().values()):
            t.fill_(i)
    ck = {"network_weights": ours.state_dict(), "nnssl_adaptation_plan": export.adaptation_plan("resenc-l", (128,) * 3)}
    ds = {"name": "Dataset042_Tiny", "channels": 1, "labels": {"background": 0, "a": 1}, "median_shape_1mm": [150, 180, 150]}
    plans = json.loads(json.dumps(to_nnunet.nnunet_plans(ck["nnssl_adaptation_plan"], ds, Path("e.pth"))))
    net = _nnunet_network_from_plans(plans, channels=1, classes=2)
    weights = to_nnunet.pretrained_weights(ck, 1, Path("e.pth"))
    model = net.state_dict()
    assert {k for k in model if ".seg_layers." not in k} <= set(weights["network_weights"])
    assert all(model[k].shape == weights["network_weights"][k].shape for k in model if ".seg_layers." not in k)
    count = lambda sd: sum(v.numel() for k, v in sd.items() if ".seg_layers." not in k)  # noqa: E731
    assert count(dict(net.named_parameters())) == count(dict(ours.named_parameters()))


@pytest.mark.parametrize("case", ["primus", "no-dataset", "nan"])
def test_unusable_inputs_are_one_line_exit_1(tmp_path, capsys, case):
    dataset = _raw_dataset(tmp_path / "raw", channels=1)
    ck = export.nnssl_checkpoint(networks.tiny(), "tiny", (32, 32, 32))
    if case == "primus":
        ck["nnssl_adaptation_plan"] = export.adaptation_plan("primus-m", (32, 32, 32))
    if case == "nan":
        ck["network_weights"]["encoder.stem.convs.0.conv.bias"].fill_(float("nan"))
    torch.save(ck, tmp_path / "e.pth")
    args = [str(tmp_path / "e.pth"), "--dataset", str(tmp_path if case == "no-dataset" else dataset),
            "--out", str(tmp_path / "out")]
    assert to_nnunet.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {"primus": "'PrimusM'", "no-dataset": "no dataset.json", "nan": "holds NaN"}[case] in err
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_one_line_exit_2_without_abbreviations(tmp_path, capsys):
    for argv in (["e.pth", "--data", "x", "--out", "y"], ["e.pth"]):
        with pytest.raises(SystemExit) as e:
            to_nnunet.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "usage:" not in err


def test_docs_nnunet_route_names_the_commands_the_tool_prints():
    text = DOCS.read_text()
    section = text[text.index("## The nnU-Net route"):]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = " ".join(blocks)
    for needle in ("nnUNetv2_preprocess_like_nnssl", "nnUNetv2_train_pretrained", "python -m trainers.to_nnunet",
                   "nnUNetv2_extract_fingerprint", "dataset.json $nnUNet_preprocessed", "nnUNetv2_preprocess -d",
                   "-pretrained_weights"):
        assert needle in commands, needle
    line = next(ln for b in blocks for ln in b.replace("\\\n", " ").splitlines() if "python -m trainers.to_nnunet" in ln)
    argv = line.split("python -m trainers.to_nnunet", 1)[1].split()
    args = to_nnunet.get_args_parser().parse_args(argv)  # the documented flags exist, spelled in full
    assert args.dataset and args.out
