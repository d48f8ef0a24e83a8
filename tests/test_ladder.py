"""The seed's ablation ladder as the method ran it: every rung by flags, two stages, reference optimisers.

Runs use the tiny net on 24³ views over a store preprocessed from the embedded real MRI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _procs import TINY
from trainers import cva



@pytest.fixture(scope="module")
def store(train_store) -> Path:
    """The small sample tree through the real onemmiso preprocessing (tests/conftest.py), read only."""
    return train_store


def _run(store: Path, out: Path, *flags: str) -> list[dict]:
    cva.main(["--store", str(store), "--out", str(out), *TINY, "--no-checkpoint", *flags])
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_gram_terms_in_a_real_two_step_run(store, stage1, tmp_path):
    """Stage 2 from the stage-1 MAE, same views and masks on every rung. The fork's Gram (the default)
    reaches the weights but is two orders below the cosine (measured ~0.004-0.013 vs ~2; the voxel-count-
    normalised one before, ~3e-6, left the run identical to `none`); ``--gram-norm cosine`` is of the
    cosine's order (docs/ladder.md)."""
    flags = ["--steps", "2", "--no-contrastive", "--init-from", str(stage1)]
    fork = _run(store, tmp_path / "gram", "--consistency", "gram", *flags)
    gcos = _run(store, tmp_path / "gcos", "--consistency", "gram", "--gram-norm", "cosine", *flags)
    none = _run(store, tmp_path / "none", "--consistency", "none", *flags)
    cos = _run(store, tmp_path / "cos", "--consistency", "cva", *flags)
    for f, g, c in zip(fork, gcos, cos):
        assert 1e-3 < f["consistency"] < 0.05 * c["consistency"] and 1.0 < c["consistency"] < 3.0, (f, c)
        assert 0.5 < g["consistency"] / c["consistency"] < 2.0, (g, c)  # the same order as the cosine's
        for row in (f, g):
            assert row["loss"] == pytest.approx(5 * row["recon"] + 2.0 * row["consistency"], rel=1e-6)  # weight 2.0
    assert fork[0]["recon"] == none[0]["recon"] == gcos[0]["recon"]  # same data, views, masks and initial weights
    assert abs(fork[0]["grad_norm"] - none[0]["grad_norm"]) > 1e-4 * none[0]["grad_norm"]  # the term has a gradient
    assert fork[1]["recon"] != none[1]["recon"] and gcos[1]["recon"] != fork[1]["recon"]


def _backbone_of(ckpt_path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(ckpt_path, weights_only=True)
    return {k[len("backbone."):]: v for k, v in ckpt["student"].items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def stage1(store, tmp_path_factory) -> Path:
    """A stage-1 MAE run (no consistency, no contrastive: no heads), 3 steps, with its nnssl export."""
    out = tmp_path_factory.mktemp("stage1") / "mae"
    cva.main(["--store", str(store), "--out", str(out), "--config", "tiny_cpu_mae",
              "--patch-size", "24", "--threads", "1", "--steps", "3", "--export", str(out / "export.pth")])
    return out


#: a step this small moves no weight by more than ~1e-30 (lr 0 itself is refused: it trains nothing)
TINY_LR = "1e-30"


def _same(got: torch.Tensor, want: torch.Tensor, key: str) -> None:
    """Equal but for one step at TINY_LR (a wrong or missing load differs by the weights themselves, ~1e-2)."""
    torch.testing.assert_close(got, want, rtol=0, atol=1e-25, msg=key)


@pytest.mark.parametrize("source", ["folder", "checkpoint", "export", "nnssl-ddp"])
def test_stage2_starts_from_exactly_the_stage1_backbone(store, stage1, tmp_path, source):
    """Every accepted source form; lr 1e-30 moves no weight by more than 1e-25, so after one step they are
    still the start (lr 0 is refused as training nothing)."""
    want = _backbone_of(stage1 / "checkpoint.pt")
    path = {"folder": stage1, "checkpoint": stage1 / "checkpoint.pt", "export": stage1 / "export.pth"}.get(source)
    if source == "nnssl-ddp":  # nnssl's own checkpoints carry DDP's "module." prefix and more fields
        exported = torch.load(stage1 / "export.pth", weights_only=True)
        path = tmp_path / "nnssl.pth"
        torch.save({**exported, "network_weights": {"module." + k: v for k, v in exported["network_weights"].items()},
                    "optimizer_state": {}, "current_epoch": 1000}, path)
    out = tmp_path / "cva"
    result = cva.train(cva.parse_args(["--store", str(store), "--out", str(out), *TINY, "--init-from", str(path),
                                       "--init-recon-head", "--steps", "1", "--lr", TINY_LR, "--warmup-steps", "0"]))
    student, teacher = result["student"], result["teacher"]
    assert student.projector is not None  # the CVA heads exist although stage 1 had none
    for k, v in want.items():
        _same(student.backbone.state_dict()[k], v, k)
        # teacher = copy of the student (after one EMA step of equal weights: equal up to float round-off)
        torch.testing.assert_close(teacher.backbone.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1  # schedules restart at step 0


def test_init_from_leaves_the_reconstruction_head_fresh_as_the_fork(store, stage1, tmp_path):
    """The fork's load_pretrained_weights skips ``.seg_layers.``: without --init-recon-head the head keeps this
    run's initialisation, every other backbone tensor is stage 1's."""
    want = _backbone_of(stage1 / "checkpoint.pt")
    result = cva.train(cva.parse_args(["--store", str(store), "--out", str(tmp_path / "cva"), *TINY, "--init-from",
                                       str(stage1), "--steps", "1", "--lr", TINY_LR, "--warmup-steps", "0"]))
    got = result["student"].backbone.state_dict()
    head = [k for k in want if ".seg_layers." in f".{k}"]
    assert len(head) == 6  # the tiny net's output convolutions, one per decoder stage: weights and biases
    for k in want:
        if k not in head:
            _same(got[k], want[k], k)
    # the head stage 1 trained (the last; without deep supervision the others keep the seed's draw in both runs)
    assert not torch.equal(got["decoder.seg_layers.2.weight"], want["decoder.seg_layers.2.weight"])


def test_two_stage_pair_runs_and_stage2_moves_off_the_stage1_weights(store, stage1, tmp_path):
    out = tmp_path / "cva"
    cva.main(["--store", str(store), "--out", str(out), *TINY, "--init-from", str(stage1), "--steps", "2"])
    assert (out / "checkpoint.pt").exists()
    before, after = _backbone_of(stage1 / "checkpoint.pt"), _backbone_of(out / "checkpoint.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # a resumed stage 2 ignores --init-from (it continues from its own checkpoint)
    cva.main(["--store", str(store), "--out", str(out), *TINY, "--init-from", str(stage1), "--steps", "3"])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3


def test_a_source_that_does_not_fit_is_one_line(store, stage1, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    weights = _backbone_of(stage1 / "checkpoint.pt")
    weights["encoder.stem.convs.0.conv.weight"] = torch.zeros(8, 4, 3, 3, 3)  # 4 input channels
    torch.save({"network_weights": weights}, bad)
    flags = ["--store", str(store), "--out", str(tmp_path / "o"), *TINY, "--steps", "1"]
    for content, reason in ((None, "does not fit this backbone, 1 wrong shape key"),
                            ({"something": 1}, "neither an nnssl checkpoint"), ("missing", "no such file")):
        if isinstance(content, dict):
            torch.save(content, bad)
        with pytest.raises(SystemExit) as exit_:
            cva.main([*flags, "--init-from", str(tmp_path / "nope.pth") if content == "missing" else str(bad)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 1 and err[-1].startswith("trainers.cva: error: --init-from ") and reason in err[-1]
        assert "Traceback" not in "".join(err)


def test_init_from_a_hugging_face_model_repo_is_fetched_and_verified(store, stage1, tmp_path, monkeypatch):
    from hf_server import HubFixture

    from openmind_prep.sources.hub import DownloadError

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    repo = tmp_path / "repo"
    (repo / "checkpoints").mkdir(parents=True)
    (repo / "checkpoints" / "mae.pth").write_bytes((stage1 / "export.pth").read_bytes())
    (repo / "README.md").write_text("an MAE checkpoint\n")
    hub = HubFixture(repo, "AnonRes/Tiny-OpenMind-MAE", lfs_threshold=1000, repo_type="model")
    try:
        out = tmp_path / "cva"
        result = cva.train(cva.parse_args(["--store", str(store), "--out", str(out), *TINY, "--steps", "1",
                                           "--lr", TINY_LR, "--warmup-steps", "0", "--hub-endpoint", hub.endpoint,
                                           "--init-from", "hf://AnonRes/Tiny-OpenMind-MAE", "--init-recon-head"]))
        for k, v in _backbone_of(stage1 / "checkpoint.pt").items():
            _same(result["student"].backbone.state_dict()[k], v, k)
        fetched = out / "init" / "AnonRes--Tiny-OpenMind-MAE" / "checkpoints" / "mae.pth"
        assert fetched.read_bytes() == (repo / "checkpoints" / "mae.pth").read_bytes()
        assert hub.hits("cdn", 200)  # the LFS object came through the verified download path
        hub.faults.corrupt["checkpoints/mae.pth"] = -1  # always a flipped byte: never accepted
        from trainers.init_from import fetch_hf

        with pytest.raises(DownloadError, match="checksum mismatch"):
            fetch_hf("hf://AnonRes/Tiny-OpenMind-MAE/checkpoints/mae.pth", tmp_path / "again", endpoint=hub.endpoint)
        assert not (tmp_path / "again" / "AnonRes--Tiny-OpenMind-MAE" / "checkpoints" / "mae.pth").exists()
    finally:
        hub.close()


@pytest.mark.parametrize("name, want", [
    ("resenc_l_mae", dict(arch="resenc-l", optimizer="sgd", lr=1e-2, momentum=0.99, weight_decay=3e-5, warmup_steps=0,
                          clip_grad=12.0, consistency="none", contrastive=False)),
    ("resenc_l_cva", dict(arch="resenc-l", optimizer="sgd", lr=1e-2, weight_decay=3e-5, warmup_steps=0, clip_grad=12.0,
                          consistency="cva", consistency_weight=1.0, contrastive=True, voxel_head=True)),
    ("primus_m_mae", dict(arch="primus-m", optimizer="adamw", lr=3e-4, weight_decay=5e-2, warmup_steps=50 * 250,
                          clip_grad=1.0, consistency="none", contrastive=False, mask_block=8)),
    ("primus_m_cva", dict(arch="primus-m", optimizer="adamw", lr=3e-4, weight_decay=5e-2, warmup_steps=10 * 250,
                          clip_grad=1.0, consistency="cva", contrastive=True, mask_block=8, pool_size=20)),
])
def test_configs_carry_the_reference_values(name, want):
    args = cva.parse_args(["--store", "s", "--out", "o", "--config", str(name)])
    assert {k: getattr(args, k) for k in want} == want


def test_flags_left_out_take_the_reference_per_architecture():
    sgd = cva.parse_args(["--store", "s", "--out", "o", "--arch", "resenc-l"])
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay, sgd.warmup_steps, sgd.clip_grad) == ("sgd", 1e-2, 3e-5, 0, 12.0)
    adamw = cva.parse_args(["--store", "s", "--out", "o", "--arch", "primus-m"])
    assert (adamw.optimizer, adamw.lr, adamw.weight_decay, adamw.clip_grad) == ("adamw", 3e-4, 5e-2, 1.0)
    # from scratch (no --init-from): AlignedMAETrainer's 0.5, AlignedConConMAETrainer's 0.5 (tests/test_ladder_table.py)
    for rung, weight in (("cva", 0.5), ("c-cva", 0.5), ("gram", 2.0)):
        assert cva.parse_args(["--store", "s", "--out", "o", "--consistency", rung]).consistency_weight == weight
    for recon, momentum in (("mae", 0.995), ("ae", 0.0)):  # the fork's AlignedAETrainer: teacher = student
        assert cva.parse_args(["--store", "s", "--out", "o", "--recon", recon]).ema_momentum == momentum
    assert cva.parse_args(["--store", "s", "--out", "o", "--recon", "ae", "--ema-momentum", "0.9"]).ema_momentum == 0.9


def test_the_ae_rung_teacher_is_the_student_after_every_step(store, tmp_path):
    """As the fork's AE trainer (momentum 0: a copy of the student); the MAE rung's EMA teacher lags."""
    nets = {}
    for recon in ("ae", "mae"):
        args = cva.parse_args(["--store", str(store), "--out", str(tmp_path / recon), *TINY, "--no-checkpoint",
                               "--recon", recon, "--steps", "2"])
        nets[recon] = cva.train(args)
    ae, mae = nets["ae"], nets["mae"]
    for (k, s), t in zip(ae["student"].state_dict().items(), ae["teacher"].state_dict().values()):
        assert torch.equal(s, t), k
    assert any(not torch.equal(s, t) for s, t in zip(mae["student"].parameters(), mae["teacher"].parameters()))


@pytest.mark.parametrize("flags, terms", [
    (["--consistency", "none", "--no-contrastive"], {"recon"}),                    # MAE ✗ ✗
    (["--consistency", "none", "--contrastive"], {"recon", "ntxent"}),             # MAE ✗ ✓
    (["--consistency", "cva", "--contrastive"], {"recon", "consistency", "ntxent"}),  # MAE CVA ✓ (the default)
    (["--recon", "ae", "--consistency", "cva", "--contrastive"], {"recon", "consistency", "ntxent"}),
    (["--consistency", "c-cva", "--contrastive"], {"recon", "consistency", "ntxent"}),
    (["--consistency", "gram", "--no-contrastive", "--no-voxel-head"], {"recon", "consistency"}),
    (["--consistency", "cva", "--view-augment", "per-view"], {"recon", "consistency", "ntxent"}),
])
def test_every_rung_runs_by_flags_on_the_tiny_config(store, tmp_path, flags, terms):
    rows = _run(store, tmp_path / "run", "--steps", "2", *flags)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r) >= terms | {"loss"} and not ({"recon", "consistency", "ntxent"} - terms) & set(r)
        assert all(r[k] == r[k] and abs(r[k]) < 1e6 for k in terms)  # finite
