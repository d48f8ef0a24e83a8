"""The CVA trainer end to end on CPU over a store preprocessed from the embedded real MRI.

Runs are tiny (24³ views, the tiny net) so that the whole file stays well under two minutes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from _procs import TINY, torchrun
from trainers import cva
from trainers.networks import CVANet, tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(train_store) -> Path:
    return train_store


def _args(store: Path, out: Path, *extra: str):
    return cva.parse_args(["--store", str(store), "--out", str(out), *TINY, *extra])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _fixed_batch_loss(store: Path, ckpt: dict, args) -> float:
    """The run's loss on one fixed batch (same volumes, views and masks) with the checkpoint's networks."""
    from loaders import OverlapViewSampler
    from loaders.zarr_dataset import ZarrVolumeDataset

    ds = ZarrVolumeDataset(store, masks=False)
    vols = [ds[i]["image"].float() for i in range(len(ds))]
    pair = OverlapViewSampler(args.patch_size, flip=False, scale=False, rotate=False, intensity=False,
                              mask_block=args.mask_block)(vols, generator=torch.Generator().manual_seed(123))
    student, teacher = CVANet(tiny(), 8, 256), CVANet(tiny(), 8, 256).eval()
    student.load_state_dict(ckpt["student"])
    teacher.load_state_dict(ckpt["teacher"])
    torch.manual_seed(0)
    with torch.no_grad():
        out_s, out_t = cva.forward_pair(student, teacher, pair.views, pair.masks, args)
        terms = cva.cva_losses(out_s, out_t, pair.views, pair.boxes, pair.masks, args)
    return float(terms["loss"])


def test_tiny_run_lowers_its_loss_and_exports(store, tmp_path):
    out = tmp_path / "run"
    flags = ["--store", str(store), "--out", str(out), *TINY, "--steps", "40", "--ckpt-every", "20",
             "--export", str(out / "export.pth")]
    cva.main([*flags, "--stop-at-step", "1"])
    after_one = torch.load(out / "checkpoint.pt", weights_only=True)
    cva.main(flags)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    args = cva.parse_args(flags)
    before, after = _fixed_batch_loss(store, after_one, args), _fixed_batch_loss(store, ckpt, args)
    assert after < 0.9 * before, (before, after)
    rows = _log(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in rows)
    assert {"recon", "consistency", "ntxent"} <= set(rows[0])
    assert (out / "loss.png").stat().st_size > 1000
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "tiny" and config["patch_size"] == [24, 24, 24]
    assert ckpt["step"] == 40 and ckpt["config"] == config
    # the export loads into the matching dynamic-network-architectures network
    exported = torch.load(out / "export.pth", weights_only=True)
    net = tiny()
    net.load_state_dict(exported["network_weights"])
    student = CVANet(tiny(), 8, 256)
    student.load_state_dict(ckpt["student"])
    for k, v in student.backbone.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


def test_stopped_and_resumed_run_equals_a_straight_run(store, tmp_path):
    straight = cva.train(_args(store, tmp_path / "a", "--steps", "4", "--ckpt-every", "100"))
    cva.train(_args(store, tmp_path / "b", "--steps", "4", "--ckpt-every", "100", "--stop-at-step", "2"))
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = cva.train(_args(store, tmp_path / "b", "--steps", "4", "--ckpt-every", "100"))
    assert resumed["step"] == straight["step"] == 4
    for name in ("student", "teacher"):
        a, b = straight[name].state_dict(), resumed[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ca = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert torch.equal(ca["rng"][0]["views"], cb["rng"][0]["views"])
    assert [r["loss"] for r in _log(tmp_path / "a")] == [r["loss"] for r in _log(tmp_path / "b")]


def test_ddp_two_cpu_processes_keep_replicas_in_sync(store, tmp_path):
    out = tmp_path / "ddp"
    cmd = torchrun(2, "-m", "trainers.cva", "--store", str(store), "--out", str(out), *TINY,
                   "--steps", "3", "--batch-size", "1", "--threads", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["replicas"]) == 2
    assert ckpt["replicas"][0] == ckpt["replicas"][1]  # both ranks hold the same student and teacher
    init = CVANet(tiny(), 8, 256)
    assert not torch.equal(init.backbone.encoder.stem.convs[0].conv.weight,
                           ckpt["student"]["backbone.encoder.stem.convs.0.conv.weight"])  # it did train
    assert [r["samples_per_s"] > 0 for r in _log(out)] == [True] * 3


def test_tiny_run_streams_webdataset_shards(store, tmp_path):
    from openmind_prep.shards.writer import merge_index, write_shards

    write_shards(store, tmp_path / "wds", shard_size=1, progress=False)  # one volume per shard
    merge_index(tmp_path / "wds")
    out = tmp_path / "run"
    result = cva.train(cva.parse_args(["--shards", str(tmp_path / "wds"), "--out", str(out), *TINY, "--steps", "3"]))
    assert result["step"] == 3 and [r["step"] for r in _log(out)] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in _log(out))


@pytest.mark.parametrize("recon", ["ae", "mae"])
@pytest.mark.parametrize("consistency", ["none", "cva", "c-cva", "gram"])
@pytest.mark.parametrize("contrastive", [True, False])
def test_every_ablation_row_gives_its_terms_and_gradients(recon, consistency, contrastive, tmp_path):
    flags = ["--recon", recon, "--consistency", consistency, "--contrastive" if contrastive else "--no-contrastive"]
    args = cva.parse_args(["--store", str(tmp_path), "--out", str(tmp_path), *TINY, *flags])
    torch.manual_seed(0)
    net = CVANet(tiny(), 2, 32, heads=cva.uses_heads(args))
    teacher = CVANet(tiny(), 2, 32, heads=cva.uses_heads(args)).eval()
    views = torch.randn(4, 1, 16, 16, 16)
    boxes = torch.tensor([[0.25, 0.0, 0.5, 1.0, 0.75, 1.0]] * 2 + [[0.0, 0.25, 0.5, 0.75, 1.0, 0.0]] * 2)
    masks = torch.rand(4, 1, 16, 16, 16) > 0.75 if recon == "mae" else None
    out_s, out_t = cva.forward_pair(net, teacher, views, masks, args)
    assert (out_t is None) == (consistency == "none" and not contrastive)  # no teacher forward when unused
    terms = cva.cva_losses(out_s, out_t, views, boxes, masks, args)
    want = {"loss", "recon"} | ({"consistency"} if consistency != "none" else set()) | ({"ntxent"} if contrastive else set())
    assert set(terms) == want
    # the fork's from-scratch weights (AlignedMAETrainer, AlignedConConMAETrainer; AE: AlignedAETrainer's 0.5)
    weight = {"none": 0.0, "cva": 0.5, "c-cva": 0.5, "gram": 2.0 if recon == "mae" else 0.5}[consistency]
    plain_mae = recon == "mae" and consistency == "none" and not contrastive  # nnssl's BaseMAETrainer: MSE ×1
    recon_weight = 1.0 if plain_mae else 5.0
    expected = recon_weight * terms["recon"] + weight * terms.get("consistency", 0) + 0.1 * terms.get("ntxent", 0)
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert net.backbone.encoder.stem.convs[0].conv.weight.grad.abs().sum() > 0


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("arch = 'primus-m'\npatch_size = [160]\nlr = 1e-4\n")
    args = cva.parse_args(["--store", "s", "--out", "o", "--config", str(cfg), "--lr", "5e-4"])
    assert (args.arch, args.patch_size, args.lr) == ("primus-m", (160, 160, 160), 5e-4)
    cfg.write_text("learning_rate = 1\n")
    with pytest.raises(SystemExit):
        cva.parse_args(["--store", "s", "--out", "o", "--config", str(cfg)])


def test_schedules_are_per_step_arrays():
    lr = cva.warmup_schedule(1.0, 0.0, 10, 100, "poly")
    assert len(lr) == 100 and lr[9] == 1.0 and lr[4] == 0.5 and lr[-1] < 0.05
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    cos = cva.warmup_schedule(1.0, 0.1, 0, 100, "cosine")
    assert cos[0] == 1.0 and cos[-1] == pytest.approx(0.1, abs=1e-3)
    m = cva.momentum_schedule(0.995, 1.0, 50)
    assert m[0] == 0.995 and m[-1] == pytest.approx(1.0, abs=1e-3)
    assert (cva.momentum_schedule(0.995, None, 5) == 0.995).all()
