"""Every shipped config × rung resolves the weights, loss kind and optimiser values the reference ran.

The table is re-typed by hand from the reference classes (the fork Tenbatsu24/LatentCampus at 267c976:
``aligned_mae_trainer.py``, ``aligned_mae_eva_trainer.py``, ``aligned_mae_loss.py``; nnssl at 7044864:
``BaseMAETrainer`` / ``BaseEvaMAETrainer`` / ``AbstractTrainer``), one row per (config, rung), each naming its
class; it is checked through ``python -m trainers.cva ... --dry-run``. Values where we differ on purpose are
marked and listed in docs/ladder.md.
"""

from __future__ import annotations

import json

import pytest

from trainers import cva, settings

# The fork's AlignedMAELoss(recon_weight, fg_cos_weight=0.5, ntxent_weight=0.1) defaults; nnssl's MAEMSELoss ×1.
HUBER5, MSE1 = ("huber", 5.0), ("mse", 1.0)
SGD = dict(optimizer="sgd", lr=1e-2, weight_decay=3e-5, momentum=0.99, warmup_steps=0, clip_grad=12.0)  # AbstractTrainer
ADAMW = dict(optimizer="adamw", lr=3e-4, weight_decay=5e-2, clip_grad=1.0)  # BaseEvaMAETrainer (betas 0.9, 0.98)
TINY = dict(optimizer="adamw", lr=1e-3, weight_decay=5e-2, warmup_steps=5, clip_grad=12.0)  # CPU config, no class

#: (configs, rung) -> (class, recon (kind, weight), consistency weight, NT-Xent on, optimiser values, extra)
TABLE = {
    # ResEnc-L stage 2: AlignedMAE128Trainer (total_batch_size 4, 128³), SGD 1e-2, teacher 0.995
    ("resenc_l_cva", "none"): ("ConMAEFTTrainer", HUBER5, 0.0, True, SGD, {}),
    ("resenc_l_cva", "cva"): ("AlignedMAEFTTrainer", HUBER5, 1.0, True, SGD, {}),
    ("resenc_l_cva", "c-cva"): ("AlignedConConMAEFTTrainer", HUBER5, 0.2, True, SGD, {}),
    ("resenc_l_cva", "gram"): ("GramAlignedMAEFTConTrainer", HUBER5, 2.0, True, SGD, {}),
    # Primus-M stage 2: AlignedMAEFTLR3EvaTrainer (total_batch_size 4), AdamW 3e-4, 10 warm-up epochs of 250
    ("primus_m_cva", "none"): ("ConMAEFTEvaLR3Trainer", HUBER5, 0.0, True, {**ADAMW, "warmup_steps": 2500}, {}),
    ("primus_m_cva", "cva"): ("AlignedMAEFTLR3EvaTrainer", HUBER5, 1.0, True, {**ADAMW, "warmup_steps": 2500}, {}),
    ("primus_m_cva", "c-cva"): ("AlignedConConMAEFTEvaTrainer", HUBER5, 0.2, True, {**ADAMW, "warmup_steps": 2500},
                                {}),
    # GramAlignedMAEFTConEvaLR3Trainer warms up 5 epochs (1250 steps): on purpose we keep the config's 10 (ladder.md)
    ("primus_m_cva", "gram"): ("GramAlignedMAEFTConEvaLR3Trainer", HUBER5, 2.0, True,
                               {**ADAMW, "warmup_steps": 2500}, {}),
    # ResEnc-L stage 1: BaseMAETrainer (MSE ×1, total_batch_size 2, 160³); from-scratch rungs of the fork
    ("resenc_l_mae", "none"): ("BaseMAETrainer", MSE1, 0.0, False, SGD, {}),
    ("resenc_l_mae", "cva"): ("AlignedMAETrainer", HUBER5, 0.5, False, SGD, {}),
    ("resenc_l_mae", "c-cva"): ("AlignedConConMAETrainer", HUBER5, 0.5, False, {**SGD, "lr": 5e-3}, {}),
    ("resenc_l_mae", "gram"): ("GramAlignedMAEFTConTrainer (no from-scratch class)", HUBER5, 2.0, False, SGD, {}),
    # Primus-M stage 1: BaseEvaMAETrainer (MSE ×1, 50 warm-up epochs, drop path 0.2)
    ("primus_m_mae", "none"): ("BaseEvaMAETrainer", MSE1, 0.0, False, {**ADAMW, "warmup_steps": 12500}, {}),
    ("primus_m_mae", "cva"): ("AlignedMAEEvaTrainer", HUBER5, 0.5, False, {**ADAMW, "warmup_steps": 12500}, {}),
    ("primus_m_mae", "c-cva"): ("AlignedConConMAETrainer's weight (no Eva class)", HUBER5, 0.5, False,
                                {**ADAMW, "warmup_steps": 12500}, {}),
    ("primus_m_mae", "gram"): ("GramAlignedMAEFTConEvaLR3Trainer (no from-scratch class)", HUBER5, 2.0, False,
                               {**ADAMW, "warmup_steps": 12500}, {}),
    # the AE rung: AlignedAEFTTrainer (total_batch_size 2, 160³, lr 5e-3, teacher_mom 0, ntxent_weight 0)
    ("resenc_l_ae", "cva"): ("AlignedAEFTTrainer", HUBER5, 0.5, False, {**SGD, "lr": 5e-3},
                             {"ema_momentum": 0.0, "global_batch_size": 2, "patch_size": [160] * 3}),
    ("resenc_l_ae", "none"): ("AlignedAEFTTrainer without its consistency term", HUBER5, 0.0, False,
                              {**SGD, "lr": 5e-3}, {"ema_momentum": 0.0}),
    # stage 2 with the MAE-only overlay: the fork's Huber ×5 (no class trains plain MAE in stage 2)
    ("resenc_l_cva+mae_only", "none"): ("AlignedMAEFTTrainer's loss, terms off", HUBER5, 0.0, False, SGD, {}),
    # CPU configs (from scratch, no reference class for the optimiser): the rung weights of the fork's classes
    ("tiny_cpu", "cva"): ("AlignedMAETrainer's weights", HUBER5, 0.5, True, TINY, {}),
    ("tiny_cpu", "c-cva"): ("AlignedConConMAETrainer's weights", HUBER5, 0.5, True, TINY, {}),
    ("tiny_cpu", "gram"): ("GramAlignedMAEFTConTrainer's weights", HUBER5, 2.0, True, TINY, {}),
    ("tiny_cpu_mae", "none"): ("BaseMAETrainer's loss", MSE1, 0.0, False, TINY, {}),
}
STAGE2 = {"resenc_l_cva": 4, "primus_m_cva": 4, "resenc_l_ae": 2}  # global batch of the stage-2 configs
STAGE1 = {"resenc_l_mae": 2, "primus_m_mae": 2}


def dry_run(capsys, configs: str, rung: str, *flags: str) -> dict:
    argv = [a for c in configs.split("+") for a in ("--config", c)] + ["--consistency", rung, *flags, "--dry-run"]
    cva.main(argv)
    return json.loads(capsys.readouterr().out)


def mismatches(row: tuple, got: dict) -> list[str]:
    """The resolved values that differ from the table row (named with the row's class)."""
    cls, (kind, recon_weight), weight, contrastive, optim, extra = row
    want = {"recon_loss": kind, "recon_weight": recon_weight, "consistency_weight": weight,
            "contrastive": contrastive, **optim, **extra}
    if contrastive:
        want["contrastive_weight"] = 0.1
    if "ema_momentum" not in extra:
        want["ema_momentum"] = 0.995
    return [f"{cls}: {k} {got[k]!r} != {v!r}" for k, v in want.items() if got[k] != v]


@pytest.mark.parametrize("key", sorted(TABLE), ids=lambda k: f"{k[0]}-{k[1]}")
def test_config_and_rung_resolve_as_the_reference_class(capsys, key):
    configs, rung = key
    got = dry_run(capsys, configs, rung)
    assert mismatches(TABLE[key], got) == []
    first = configs.split("+")[0]
    if first in STAGE2:
        assert (got["stage"], got["global_batch_size"]) == (2, STAGE2[first])
    if first in STAGE1:
        assert (got["stage"], got["global_batch_size"]) == (1, STAGE1[first])


def test_a_planted_wrong_weight_is_caught(capsys, monkeypatch):
    monkeypatch.setitem(settings.CONSISTENCY_WEIGHTS, ("c-cva", 2), 0.5)  # the from-scratch value in stage 2
    got = dry_run(capsys, "resenc_l_cva", "c-cva")
    assert mismatches(TABLE[("resenc_l_cva", "c-cva")], got) == [
        "AlignedConConMAEFTTrainer: consistency_weight 0.5 != 0.2"]


def test_explicit_values_win_and_init_from_means_stage_2(capsys):
    got = dry_run(capsys, "resenc_l_cva", "gram", "--consistency-weight", "0.7", "--recon-loss", "mse")
    assert (got["consistency_weight"], got["recon_loss"], got["recon_weight"]) == (0.7, "mse", 1.0)
    cva.main(["--consistency", "c-cva", "--init-from", "runs/mae", "--dry-run"])
    assert json.loads(capsys.readouterr().out)["consistency_weight"] == 0.2
    cva.main(["--consistency", "c-cva", "--dry-run"])
    assert json.loads(capsys.readouterr().out)["consistency_weight"] == 0.5


def test_global_batch_is_split_across_ranks_and_refused_when_uneven(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = dry_run(capsys, "resenc_l_cva", "cva")
    assert (got["global_batch_size"], got["batch_size"], got["world"]) == (4, 2, 2)
    assert dry_run(capsys, "resenc_l_cva", "cva", "--batch-size", "3")["global_batch_size"] == 6  # per rank wins
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit) as exit_:
        dry_run(capsys, "resenc_l_cva", "cva")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "trainers.cva: error: --global-batch-size 4: not divisible by the 3 processes of this run")


def test_no_shipped_config_pins_a_rung_weight():
    from trainers import configs

    for name in configs.names():
        assert "consistency_weight" not in configs.read(configs.find(name)), name
        assert not {"recon_weight", "recon_loss"} & set(configs.read(configs.find(name))), name


def test_the_ladder_docs_dry_runs_say_what_their_comments_say(capsys):
    """docs/ladder.md's --dry-run block, run as written (in-process: the same argv)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "ladder.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "--dry-run" in b)
    runs = []
    for line in block.splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[:3] == ["python", "-m", "trainers.cva"], line
        cva.main(argv[3:])
        runs.append(json.loads(capsys.readouterr().out))
    assert [r["consistency_weight"] for r in runs[:4]] == [0.2, 2.0, 1.0, 0.5]
    assert (runs[2]["optimizer"], runs[2]["lr"]) == ("adamw", 3e-4)
    assert (runs[4]["recon_loss"], runs[4]["recon_weight"]) == ("mse", 1.0)
    assert (runs[5]["lr"], runs[5]["global_batch_size"], runs[5]["patch_size"]) == (5e-3, 2, [160] * 3)
