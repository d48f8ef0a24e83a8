"""``plan`` as advice: the hub's request quota and concurrency, exact bytes from a pinned list, raw and output
side by side, calibration progress, the next command; ``download --limit`` shortfalls."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from hf_server import HubFixture
from openmind_prep.cli import main
from openmind_prep.sources.transfers import Transfer, suggest_max_raw_gb
from openmind_prep.sources.pinned import PinnedList
from openmind_prep.reports.estimate import MODALITIES


@pytest.fixture
def hub(sample_tree, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    fixture = HubFixture(sample_tree, lfs_threshold=1000)
    monkeypatch.setenv("HF_ENDPOINT", fixture.endpoint)
    yield fixture
    fixture.close()


@pytest.mark.parametrize("files,nbytes,quota,workers", [(340_000, 7.1e11, 5000, 4), (12, 5e7, 5000, 4),
                                                         (10_001, 1e9, 3000, 64), (5000, 1e13, 5000, 1)])
def test_transfer_is_the_largest_of_quota_bandwidth_and_round_trips(files, nbytes, quota, workers):
    t = Transfer(files=files, nbytes=nbytes, bandwidth_mb_s=100, quota_per_5min=quota, workers=workers,
                 request_seconds=0.3)
    # re-typed: whole 5-minute windows before the last one; bytes over bandwidth; round trips per worker
    floors = {"quota": (math.ceil(files / quota) - 1) * 300, "bandwidth": nbytes / 100e6,
              "concurrency": files * 0.3 / workers}
    assert t.seconds == pytest.approx(max(floors.values()))
    assert t.bound == max(floors, key=floors.get)


def test_full_pull_is_hours_on_the_quota_alone():
    result = CliRunner().invoke(main, ["plan", "--seconds-per-volume", "1", "--json", "--bandwidth", "1e6",
                                       "--download-workers", "1000"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert 320_000 < plan["files"] < 360_000  # ~340k resolve requests: images + masks + the CSV
    assert plan["download_bound"] == "quota" and plan["quota_per_5min"] == 5000
    assert plan["download_seconds"] == pytest.approx((math.ceil(plan["files"] / 5000) - 1) * 300)
    pro = json.loads(CliRunner().invoke(main, ["plan", "--seconds-per-volume", "1", "--json", "--bandwidth", "1e6",
                                               "--download-workers", "1000", "--requests-per-5min", "20000"]).stdout)
    assert pro["download_seconds"] == pytest.approx((math.ceil(plan["files"] / 20000) - 1) * 300)


def test_modality_table_uses_the_real_csv_names():
    assert {"FLASH", "PET", "UNIT1_denoised", "minIP", "sbref", "T1w", "FLAIR"} <= set(MODALITIES)
    assert not {"AD", "MTR", "PDT2", "RD"} & set(MODALITIES)


def test_plan_from_a_lock_uses_its_exact_bytes(hub, sample_tree, tmp_path):
    pin_path = tmp_path / "t1w.json"
    res = CliRunner().invoke(main, ["download", "--out", str(tmp_path / "raw"), "--modality", "T1w",
                                    "--write-pin", str(pin_path), "--pin-only"])
    assert res.exit_code == 0, res.output
    pin = PinnedList.read(pin_path)
    on_disk = sum((sample_tree / f.path).stat().st_size for f in pin.data_files)  # independent: the files
    out = CliRunner().invoke(main, ["plan", "--pin", str(pin_path), "--seconds-per-volume", "1", "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.stdout)
    assert plan["volumes"] == len(pin.images) == 2
    assert plan["raw_bytes"] == on_disk and plan["files"] == len(pin.files)
    assert plan["download_bytes"] == on_disk + (sample_tree / "openneuro_metadata.csv").stat().st_size
    text = CliRunner().invoke(main, ["plan", "--pin", str(pin_path), "--seconds-per-volume", "1"]).stdout
    assert "exact, from the pinned list" in text
    assert f"next:      openmind-prep run --out STORE --pin {pin_path} --max-raw-gb 1" in text
    refused = CliRunner().invoke(main, ["plan", "--pin", str(pin_path), "--modality", "T1w"])
    assert refused.exit_code == 2 and "drop the selection options" in refused.output


def test_calibration_reports_progress_and_the_plan_says_what_to_run(sample_tree):
    args = ["plan", "--calibrate-on", str(sample_tree), "--select", "t1w-iqs2.5", "--limit", "400",
            "--workers", "2", "--batch-size", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("calibrating ")]
    assert [line.split(":")[0] for line in progress] == ["calibrating 1/3", "calibrating 2/3", "calibrating 3/3"]
    as_json = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    raw, output = as_json["raw_bytes"], as_json["output_bytes"]
    both = f"download + preprocess keep both at once: {(raw + output) / 2**30:.1f} GiB"
    assert both in result.stdout
    # the suggestion: three batches per worker of the average image, re-typed (all 400 images are 4 bytes apart)
    mean = raw / 400
    gb = max(1, math.ceil(min(max(3 * 2 * 4 * mean, 0), raw) / 1e9))
    assert gb == suggest_max_raw_gb([mean] * 400, 2, 4)
    assert ("next:      openmind-prep run --out STORE --select t1w-iqs2.5 --limit 400 --max-raw-gb "
            in result.stdout)


def test_plan_without_the_sample_names_the_fix(monkeypatch):
    import openmind_prep.sources.embedded as embedded

    def missing(*a, **k):
        raise ModuleNotFoundError("No module named 'nilearn'", name="nilearn")

    monkeypatch.setattr(embedded, "build_sample_tree", missing)
    result = CliRunner().invoke(main, ["plan", "--limit", "10"])
    assert result.exit_code == 2 and "pip install 'openmind-prep[sample]'" in result.output
    assert "nilearn is missing" in result.output and "Traceback" not in result.output


def test_download_limit_shortfall_is_reported(hub, tmp_path):
    res = CliRunner().invoke(main, ["download", "--out", str(tmp_path / "raw"), "--modality", "T1w",
                                    "--limit", "3", "--pin-only"])
    assert res.exit_code == 0, res.output
    assert "--limit 3: only 2 image(s) match the selection" in res.stderr
    exact = CliRunner().invoke(main, ["download", "--out", str(tmp_path / "raw"), "--modality", "T1w",
                                      "--limit", "2", "--pin-only"])
    assert exact.exit_code == 0 and "only" not in exact.stderr
