"""``python -m trainers.finetune`` on the tiny config, CPU: finetune.json holds every metric per fold and
overall, each equal to an independent computation on the fold's own predictions; folds never share a
subject; ``--lr 1e-30`` leaves every loaded tensor at the initial weights (to 1e-25); one-line errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from openmind_prep.sources.embedded_tissue import DEMO_BLOCK, DEMO_CASES, build_nnunet_raw
from trainers import finetune

FAST = ["--config", "finetune_tiny_cpu", "--epochs", "1", "--iterations", "1", "--accumulation", "1",
        "--threads", "1"]


@pytest.fixture(scope="module")
def cls_store(tmp_path_factory) -> tuple[Path, Path]:
    """The test store of real MRI (8 volumes, 8 subjects) with a CSV of a class and an age per image."""
    from _store_builder import build_store

    root = tmp_path_factory.mktemp("ft")
    store, written = build_store(root / "store")
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "dx", "age"])
        for i, key in enumerate(sorted(written)):
            w.writerow([key + ".nii.gz", i % 2, 20 + 3 * i])
    return store, labels


def _auroc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


@pytest.mark.parametrize("task, target", [("cls", "dx"), ("reg", "age")])
def test_cls_and_reg_write_each_metric_equal_to_an_independent_computation(cls_store, tmp_path, task, target):
    store, labels = cls_store
    out = tmp_path / task
    finetune.main(["--store", str(store), "--task", task, "--labels", str(labels), "--target", target,
                   "--init", "scratch", "--out", str(out), *FAST])
    report = json.loads((out / "finetune.json").read_text())
    names = {"cls": ["balanced_accuracy", "auroc", "ap"], "reg": ["mae", "pearson_r"]}[task]
    assert report["metrics"] == names and len(report["folds"]) == 2
    assert report["init_sha256"] == "scratch" and report["settings"]["task"] == task
    assert (out / "finetune.png").read_bytes()[:4] == b"\x89PNG"
    per_fold = []
    for fold in report["folds"]:
        result = json.loads((out / "scratch" / f"fold_{fold['fold']}" / "result.json").read_text())
        subjects = lambda keys: {k.split("/")[1] for k in keys}  # noqa: E731  (ds/sub-NN/...)
        assert not subjects(result["train"]) & subjects(result["held_out"])
        cases = result["cases"]
        truth = np.array([c["target"] for c in cases])
        if task == "cls":
            logits = np.array([c["logits"] for c in cases])
            pred = logits.argmax(1)
            ba = np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)])
            assert fold["balanced_accuracy"] == pytest.approx(ba)
            assert fold["auroc"] == pytest.approx(_auroc(truth, logits[:, 1] - logits[:, 0]))
        else:
            pred = np.array([c["prediction"] for c in cases])
            assert fold["mae"] == pytest.approx(np.abs(truth - pred).mean())
            assert fold["pearson_r"] == pytest.approx(np.corrcoef(truth, pred)[0, 1])
        per_fold.append(fold)
    for name in names:
        values = [f[name] for f in per_fold]
        assert report["overall"][name]["mean"] == pytest.approx(np.mean(values))
        assert report["overall"][name]["sd"] == pytest.approx(np.std(values, ddof=1))


def test_a_tiny_lr_leaves_every_loaded_tensor_at_the_initial_weights(cls_store, tmp_path):
    from trainers.networks import tiny

    store, labels = cls_store
    torch.manual_seed(5)
    initial = tiny().state_dict()
    export = tmp_path / "init.pth"
    torch.save({"network_weights": initial}, export)
    out = tmp_path / "ft"
    finetune.main(["--store", str(store), "--task", "cls", "--labels", str(labels), "--target", "dx",
                   "--init", str(export), "--out", str(out), "--lr", "1e-30", "--fold", "0", *FAST])
    after = torch.load(out / "pretrained" / "fold_0" / "checkpoint.pt", weights_only=True)["student"]
    loaded = [k for k in after if k.startswith("backbone.encoder.")]
    assert len(loaded) > 20
    for key in loaded:  # one step at lr 1e-30 (lr 0 is refused) moves nothing measurable; a wrong load: ~1e-2
        torch.testing.assert_close(after[key], initial[key[len("backbone."):]], rtol=0, atol=1e-25, msg=key)
    assert not (out / "finetune.json").exists()  # one fold of two: nothing to gather yet
    report = json.loads((out / "config.json").read_text())
    assert report["init_sha256"] != "scratch" and len(report["init_sha256"]) == 64


def test_an_init_of_another_architecture_is_one_line(cls_store, tmp_path, capsys):
    store, labels = cls_store
    bad = tmp_path / "other.pth"
    torch.save({"network_weights": {"encoder.stem.convs.0.conv.weight": torch.zeros(3, 1, 1, 1, 1)}}, bad)
    with pytest.raises(SystemExit) as exit_:
        finetune.main(["--store", str(store), "--task", "cls", "--labels", str(labels), "--target", "dx",
                       "--init", str(bad), "--out", str(tmp_path / "o"), "--fold", "0", *FAST])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this network" in err[0] and str(bad) in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--task", "cls"], "--task cls needs --target"),
    (["--fold", "7"], "--fold 7: folds are 0..4"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "nan"], "--lr nan"),
    (["--lr", "0"], "--lr 0: must be a finite number above 0"),
])
def test_settings_that_cannot_work_are_one_usage_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        finetune.parse_args(["--store", str(tmp_path), "--out", str(tmp_path / "o"), "--init", "scratch", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_recipes_are_the_references():
    from trainers.finetune_model import recipe

    resenc = recipe("resenc-l", "seg", pretrained=True, epochs=50)
    assert (resenc.optimizer, resenc.lr, resenc.weight_decay, resenc.warmup_epochs) == ("sgd", 1e-3, 3e-5, 5)
    assert recipe("resenc-l", "seg", pretrained=False, epochs=50).lr == 1e-2
    primus = recipe("primus-m", "seg", pretrained=True, epochs=150)
    assert (primus.optimizer, primus.lr, primus.weight_decay, primus.clip, primus.warmup_epochs) == \
        ("adamw", 1e-4, 5e-2, 1.0, 15)
    assert recipe("primus-m", "seg", pretrained=False, epochs=50).lr == 3e-4
    cls, reg = recipe("tiny", "cls", pretrained=True, epochs=10), recipe("tiny", "reg", pretrained=True, epochs=10)
    assert (cls.lr, cls.weight_decay, cls.accumulation, reg.accumulation) == (1e-4, 3e-5, 8, 16)
    # warm-up as the fork's Lin_incr_LRScheduler, then PolyLRScheduler_offset (re-typed)
    for e in range(50):
        expected = 1e-3 * (e + 1) / 5 if e < 5 else 1e-3 * (1 - (e - 5) / 45) ** 0.9
        assert resenc.lr_at(e, 50) == pytest.approx(expected)
    assert cls.lr_at(5, 10) == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 5 / 11.5)))


# -- segmentation on a labelled store: an nnU-Net raw dataset of real MRI, preprocessed with its labels

@pytest.fixture(scope="module")
def seg_store(tmp_path_factory) -> Path:
    """Four subjects of the embedded MNI152 tissue dataset (sources/embedded_tissue.py) on a small block of the head,
    preprocessed by the real command into a store with label maps."""
    from click.testing import CliRunner

    from openmind_prep.cli import main

    root = tmp_path_factory.mktemp("seg")
    folder = build_nnunet_raw(root, DEMO_CASES, DEMO_BLOCK)
    done = CliRunner().invoke(main, ["preprocess", str(folder), "--out", str(root / "store"), "--workers", "1"])
    assert done.exit_code == 0, done.output
    return root / "store"


def test_seg_writes_dsc_and_nsd_equal_to_monai_on_the_saved_predictions(seg_store, tmp_path):
    from monai.metrics import compute_dice

    from loaders.zarr_dataset import ZarrVolumeDataset
    from trainers.finetune_score import prediction_file

    out = tmp_path / "seg"
    finetune.main(["--store", str(seg_store), "--task", "seg", "--init", "scratch", "--out", str(out),
                   *FAST, "--iterations", "2"])
    report = json.loads((out / "finetune.json").read_text())
    assert report["metrics"] == ["dsc", "nsd"] and len(report["folds"]) == 2
    for fold in report["folds"]:
        folder = out / "scratch" / f"fold_{fold['fold']}"
        result = json.loads((folder / "result.json").read_text())
        ds = ZarrVolumeDataset(seg_store, result["held_out"])
        case_dsc = []
        for i, key in enumerate(result["held_out"]):
            truth = ds[i]["label"][0].numpy()
            pred = np.load(prediction_file(folder, key))["label"]
            assert pred.shape == truth.shape
            onehot = lambda a: torch.from_numpy(np.stack([a == v for v in (0, 1, 2)]).astype(np.float32))[None]  # noqa: E731
            dsc = compute_dice(onehot(pred), onehot(truth), include_background=False)[0].numpy()
            mean = float(np.nanmean(dsc)) if not np.all(np.isnan(dsc)) else math.nan
            row = next(c for c in result["cases"] if c["key"] == key)
            assert row["dsc"] == pytest.approx(mean, abs=1e-6)
            case_dsc.append(mean)
        assert fold["dsc"] == pytest.approx(float(np.nanmean(case_dsc)), abs=1e-6)


def test_a_network_trained_on_the_labels_beats_its_scratch_twin(seg_store, tmp_path):
    """The positive control: stage 1 trains on fold 0's training images; its weights as --init then beat
    training from scratch on the same fold with the same short budget."""
    trained = tmp_path / "trained"
    finetune.main(["--store", str(seg_store), "--task", "seg", "--init", "scratch", "--out", str(trained),
                   *FAST, "--fold", "0", "--iterations", "30"])
    export = tmp_path / "trained.pth"
    state = torch.load(trained / "scratch" / "fold_0" / "checkpoint.pt", weights_only=True)["student"]
    torch.save({"network_weights": state}, export)
    out = tmp_path / "control"
    finetune.main(["--store", str(seg_store), "--task", "seg", "--init", str(export), "--compare-scratch",
                   "--out", str(out), *FAST, "--fold", "0", "--iterations", "3"])
    score = {run: json.loads((out / run / "fold_0" / "result.json").read_text())["metrics"]["dsc"]
             for run in ("pretrained", "scratch")}
    assert score["pretrained"] > score["scratch"] + 0.1, score
