"""The main job end to end on the embedded sample: every artefact of the run folder is checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from openmind_prep.cli import main
from openmind_prep.sources.metadata import read_metadata

pytestmark = pytest.mark.slow
STEPS = 48


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(main, ["demo", "--out", str(run), "--small", "--steps", str(STEPS),
                                       "--patch", "32", "--workers", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    OUTPUT["demo"] = result.output
    return run


OUTPUT: dict[str, str] = {}


def test_demo_says_what_it_will_take_before_it_starts(demo_run):
    first, second = OUTPUT["demo"].splitlines()[:2]
    assert first.startswith("estimate: about ") and "(3 volumes, 48 CVA steps at 32^3" in first
    assert second.startswith("==> sample")


def test_manifest_has_one_ok_row_per_sample_image(demo_run):
    records = read_metadata(demo_run / "raw" / "openneuro_metadata.csv")
    rows = pq.read_table(demo_run / "store" / "manifest.parquet").to_pylist()
    assert sorted(r["image_path"] for r in rows) == sorted(r.image_path for r in records)
    assert all(r["status"] == "ok" and r["error"] in ("", None) for r in rows)
    for r in rows:
        assert (demo_run / "store" / r["zarr_path"] / "zarr.json").is_file()


def test_shard_index_matches_files_and_manifest(demo_run):
    index = json.loads((demo_run / "shards" / "index.json").read_text())
    assert index["samples"] == len(pq.read_table(demo_run / "store" / "manifest.parquet"))
    assert sum(s["samples"] for s in index["shards"]) == index["samples"]
    for shard in index["shards"]:
        path = demo_run / "shards" / Path(shard["url"]).name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"].removeprefix("sha256:")


def test_pngs_decode_with_expected_sizes(demo_run):
    views = Image.open(demo_run / "views.png")
    # as many pairs as the summary says, as rows of 7 panels (view 1 and view 2 in three planes + the
    # source with both outlines), 1.9-inch panels at 100 dpi, 0.08-inch gaps, a 0.75-inch header
    # (legend) and 0.55-inch row labels (the volume's name, the pair and its overlap)
    pairs = json.loads((demo_run / "summary.json").read_text())["views"]["pairs"]
    assert pairs == 3  # the small sample's three volumes
    width, height = 0.55 + 7 * 1.9 + 6 * 0.08 + 0.1, 0.75 + pairs * 1.9 + (pairs - 1) * 0.08 + 0.1
    assert abs(views.size[0] - width * 100) <= 1 and abs(views.size[1] - height * 100) <= 1
    clusters = Image.open(demo_run / "clusters.png")
    assert clusters.size == (int((4 * 2.2 + 0.5) * 80), int(5.6 * 80))  # 4 slices + the colour legend, at 80 dpi
    loss = Image.open(demo_run / "loss.png")
    assert loss.size[0] > 300 and loss.size[1] > 200
    for png in (views, clusters, loss):
        pixels = np.asarray(png.convert("L"), dtype=np.float32)
        assert pixels.std() > 10  # a picture, not a blank canvas


def test_loss_log_decreases(demo_run):
    """The per-step loss is noisy (new views and masks every step); the loss on the fixed probe batch,
    logged every STEPS // 6 steps, must fall clearly."""
    log = [json.loads(line) for line in (demo_run / "cva" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert np.isfinite([r["loss"] for r in log]).all()
    probes = [(r["step"], r["probe_loss"]) for r in log if "probe_loss" in r]
    assert [s for s, _ in probes] == [1, *range(STEPS // 6, STEPS + 1, STEPS // 6)]
    assert probes[-1][1] < 0.95 * probes[0][1], probes


def test_summary_numbers_match_the_artefacts(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    rows = pq.read_table(demo_run / "store" / "manifest.parquet").to_pylist()
    index = json.loads((demo_run / "shards" / "index.json").read_text())
    log = [json.loads(line) for line in (demo_run / "cva" / "log.jsonl").read_text().splitlines()]
    assert summary["images"] == len(rows) and summary["ok"] == len(rows) and summary["failed"] == 0
    assert summary["shard_samples"] == index["samples"] and summary["shards"] == len(index["shards"])
    assert summary["cva"]["steps"] == STEPS and summary["cva"]["patch"] == 32  # --patch 32: what CVA trained on
    probes = [r["probe_loss"] for r in log if "probe_loss" in r]
    assert (summary["cva"]["probe_loss_first"], summary["cva"]["probe_loss_last"]) == (
        pytest.approx(probes[0], abs=1e-4), pytest.approx(probes[-1], abs=1e-4))
    quarter = STEPS // 4
    assert summary["cva"]["loss_first_quarter"] == pytest.approx(np.mean([r["loss"] for r in log[:quarter]]), abs=1e-3)
    assert summary["cva"]["loss_last_quarter"] == pytest.approx(np.mean([r["loss"] for r in log[-quarter:]]), abs=1e-3)
    stages = {k: v for k, v in summary["seconds"].items() if k != "total"}
    assert set(stages) == {"sample", "preprocess", "shards", "views", "cva", "clusters", "downstream"}
    assert all(v >= 0 for v in stages.values())
    assert summary["seconds"]["total"] >= sum(stages.values()) - 0.1
    assert all(0.4 - 1e-6 <= o <= 0.8 + 1e-6 for o in summary["views"]["overlaps"])
    text = (demo_run / "summary.txt").read_text()
    assert f"{STEPS} steps" in text and f"{len(rows)} ok" in text


def test_show_renders_a_stored_volume(demo_run, tmp_path):
    rows = pq.read_table(demo_run / "store" / "manifest.parquet").to_pylist()
    out = tmp_path / "x.png"
    result = CliRunner().invoke(main, ["show", str(demo_run / "store"), rows[0]["image_path"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (1200, 440)
    bad = CliRunner().invoke(main, ["show", str(demo_run / "store"), "ds0/sub-x/anat/nope.nii.gz", "--out", str(out)])
    assert bad.exit_code != 0 and "no stored image" in bad.output


def test_the_same_command_with_repo_downloads_then_runs(sample_tree, tmp_path, monkeypatch):
    """``--repo`` takes the download path (real huggingface_hub client against the local hub fixture):
    only the selected images arrive, verified, and the rest of the job runs on them."""
    from hf_server import HubFixture

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    hub = HubFixture(sample_tree, lfs_threshold=1000)
    try:
        run = tmp_path / "run"
        result = CliRunner().invoke(main, ["demo", "--repo", "AnonRes/OpenMind", "--endpoint", hub.endpoint,
                                           "--out", str(run), "--modality", "T1w", "--steps", "6", "--patch", "32",
                                           "--workers", "1", "--device", "cpu", "--no-downstream"])
    finally:
        hub.close()
    assert result.exit_code == 0, result.output + repr(result.exception)
    wanted = [r for r in read_metadata(sample_tree / "openneuro_metadata.csv") if r.modality == "T1w"]
    from openmind_prep.sources.pinned import downloaded_records

    # RAW's CSV is the repo's (every image); the images whose files arrived are the selected ones
    assert [r.image_path for r in downloaded_records(run / "raw")] == [r.image_path for r in wanted]
    for r in wanted:
        for f in r.files():
            assert (run / "raw" / "OpenMind" / f).read_bytes() == (sample_tree / "OpenMind" / f).read_bytes(), f
    summary = json.loads((run / "summary.json").read_text())
    assert summary["source"] == "AnonRes/OpenMind" and summary["ok"] == len(wanted) == 2
    assert summary["cva"]["steps"] == 6 and (run / "clusters.png").is_file()


def test_the_demo_ends_with_a_downstream_fine_tune_of_its_export(demo_run):
    """The downstream line: the run's export and scratch fine-tuned on the labelled MNI152 tissue dataset,
    2 folds; the summary's numbers are finetune.json's, which loaded the demo's own export."""
    import hashlib as _hash

    import torch

    report = json.loads((demo_run / "finetune" / "finetune.json").read_text())
    summary = json.loads((demo_run / "summary.json").read_text())
    text = (demo_run / "summary.txt").read_text()
    assert report["task"] == "seg" and report["init"] == str(demo_run / "cva" / "export.pth")
    assert set(report["runs"]) == {"pretrained", "scratch"} and len(report["folds"]) == 2
    weights = torch.load(demo_run / "cva" / "export.pth", weights_only=True)["network_weights"]
    digest = _hash.sha256()
    for key in sorted(weights):
        digest.update(f"{key}:{tuple(weights[key].shape)}:{weights[key].dtype}".encode())
        digest.update(weights[key].contiguous().view(torch.uint8).numpy().tobytes())
    assert report["init_sha256"] == digest.hexdigest()
    line = next(ln for ln in text.splitlines() if ln.startswith("downstream: "))
    for run in ("pretrained", "scratch"):
        dsc = report["runs"][run]["overall"]["dsc"]["mean"]
        assert summary["downstream"][run]["dsc"] == dsc and 0.0 <= dsc <= 1.0
        assert f"{dsc:.3f}" in line
    assert summary["downstream"]["paired_difference_dsc"] == pytest.approx(
        report["runs"]["pretrained"]["overall"]["dsc"]["mean"] - report["runs"]["scratch"]["overall"]["dsc"]["mean"])
    assert Image.open(demo_run / "finetune" / "finetune.png").size[0] > 500
