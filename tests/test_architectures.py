"""One record per architecture (trainers.architectures): a toy architecture registered in one record is
refused and defaulted by its record, trains 2 steps, exports with its kwargs and is probed, with no other file
touched."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from trainers import architectures, probe
from trainers.checks import problems
from trainers.resources import memory_estimate_gib
from trainers.settings import resolve

TOY_KWARGS = dict(
    n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 3,
    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1],
    conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
    dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def _toy_unet(patch_size, in_channels, out_channels, drop_path):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(input_channels=in_channels, num_classes=out_channels, deep_supervision=False,
                               **TOY_KWARGS)


@pytest.fixture
def toy(monkeypatch):
    record = architectures.Architecture(
        "toy-unet", _toy_unet, patch_multiple=4, params=20_000, bytes_per_voxel=123.0, optimizer="sgd",
        clip_grad=3.0, feature_channels=28, export_class="ResidualEncoderUNet", export_kwargs=lambda: dict(TOY_KWARGS))
    monkeypatch.setitem(architectures._REGISTRY, record.name, record)  # registered for this test only
    return record


def test_the_record_sets_defaults_refusals_and_the_memory_estimate(toy):
    s = resolve({"arch": "toy-unet", "patch_size": [16]}, world=1)
    assert (s.optimizer, s.lr, s.clip_grad) == ("sgd", 1e-2, 3.0)  # the record's optimiser and clip
    assert problems(resolve({"arch": "toy-unet", "patch_size": [18]}, world=1)) == [
        "--patch-size [18, 18, 18]: toy-unet needs multiples of 4 per axis"]
    expected = (20 * 20_000 + 123.0 * 2 * 2 * 16**3 + 0.5 * 2**30) / 2**30  # re-typed from the record's fields
    assert memory_estimate_gib("toy-unet", [16] * 3, 2) == pytest.approx(expected)
    with pytest.raises(ValueError, match="did you mean 'toy-unet'"):
        architectures.get("toy_unet")


def test_a_registered_toy_trains_exports_and_is_probed(toy, train_store, tmp_path):
    from trainers.cva import train

    out = tmp_path / "run"
    settings = resolve({"store": train_store, "out": out, "arch": "toy-unet", "patch_size": [16], "batch_size": 2,
                        "steps": 2, "num_workers": 0, "pool_size": 4, "align_size": 4, "proj_dim": 32,
                        "device": "cpu", "threads": 1, "export": out / "export.pth"}, world=1)
    result = train(settings)
    assert result["step"] == 2
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)
    export = torch.load(out / "export.pth", weights_only=True)
    plans = export["nnssl_adaptation_plan"]["architecture_plans"]
    assert plans["arch_class_name"] == "ResidualEncoderUNet"
    assert plans["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert plans["arch_kwargs"]["conv_op"] == "torch.nn.modules.conv.Conv3d"
    assert probe.main([str(out / "export.pth"), "--crop", "32", "--threads", "1", "--fit-voxels", "2000",
                       "--out", str(tmp_path / "probe")]) == 0
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert report["meta"]["arch"] == "toy-unet"  # recognised from its exported kwargs through the registry
    assert report["model"]["features"] == report["random"]["features"] == 4 + 8 + 16
