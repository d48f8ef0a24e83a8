"""``openmind-prep plan``: synthesised metadata, the scheduling model, cost fitting, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from openmind_prep.cli import main
from openmind_prep.store.manifest import empty_row, merge_manifest, write_fragment
from openmind_prep.sources.metadata import read_metadata
from openmind_prep.reports.estimate import (
    CROP_FRACTION, MODALITIES, OPENMIND_ROWS, TASK_OVERHEAD_S, WORKER_BASE_BYTES, CostModel, Volumes,
    cost_from_rows, estimate, makespan, synthesise_metadata, volumes_from_records,
)
from openmind_prep.sources.selection import Selection


def test_synthesised_metadata_follows_the_assumed_mix():
    records = synthesise_metadata(20_000, np.random.default_rng(1))
    assert len({r.image_path for r in records}) == 20_000
    shares = np.array([MODALITIES[m][0] for m in MODALITIES])
    shares = shares / shares.sum()
    counts = {m: 0 for m in MODALITIES}
    for r in records:
        counts[r.modality] += 1
    for (name, share) in zip(MODALITIES, shares):
        assert abs(counts[name] / 20_000 - share) < 4 * math.sqrt(share * (1 - share) / 20_000) + 1e-3, name
    # the selection filters work on it like on the real CSV
    t1 = Selection(modalities=("T1w",), max_iqs=2.5).apply(records)
    assert 0 < len(t1) < counts["T1w"]
    assert all(r.modality == "T1w" and r.image_quality_score <= 2.5 for r in t1)
    # sizes come from the synthetic columns: jitter within ±15 % of the table's shape per axis
    vols = volumes_from_records(records[:200])
    for r, n in zip(records[:200], vols.in_voxels):
        typical = math.prod(MODALITIES[r.modality][1])
        assert 0.85**3 * typical - 3e5 <= n <= 1.15**3 * typical + 3e5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=60), st.integers(1, 8))
def test_makespan_is_within_the_list_scheduling_bounds(costs, workers):
    span = makespan(costs, workers)
    total, longest = sum(costs), max(costs)
    assert span >= max(total / workers, longest) - 1e-9
    assert span <= total / workers + longest + 1e-9  # Graham's bound for greedy list scheduling
    if workers == 1:
        assert span == pytest.approx(total)


def test_estimate_counts_tasks_bytes_and_memory():
    n = 101
    rng = np.random.default_rng(0)
    vols = Volumes(rng.uniform(1e6, 2e7, n), rng.uniform(1e6, 2e7, n), rng.uniform(1e6, 1e7, n))
    cost = CostModel(seconds_per_mvoxel=0.1, stored_bytes_per_voxel=0.7, peak_bytes_per_voxel=20.0)
    limit = WORKER_BASE_BYTES + 20.0 * 25e6
    plan = estimate(vols, cost, workers=4, batch_size=10, bandwidth_mb_s=50.0, memory_limit_bytes=limit)
    assert plan.tasks == 11
    work = CROP_FRACTION * vols.in_voxels + vols.out_voxels
    assert plan.cpu_seconds == pytest.approx(0.1 * work.sum() / 1e6)
    batches = [0.1 * work[i:i + 10].sum() / 1e6 + TASK_OVERHEAD_S for i in range(0, n, 10)]
    assert plan.cpu_seconds / 4 <= plan.wall_seconds <= plan.cpu_seconds / 4 + max(batches) + 11 * TASK_OVERHEAD_S
    peaks = WORKER_BASE_BYTES + 20.0 * (vols.in_voxels + vols.out_voxels)
    assert plan.peak_worker_bytes == pytest.approx(peaks.max())
    assert plan.over_memory_limit == int((peaks > limit).sum()) > 0
    small = 400e6
    too_big = (vols.in_voxels * 4 > small // 8) | (vols.out_voxels * 4 > small // 8)  # the workers' rule
    assert estimate(vols, cost, 4, 10, memory_limit_bytes=small).refused_by_limit == int(too_big.sum()) > 0
    assert plan.output_bytes == pytest.approx(0.7 * vols.out_voxels.sum())
    assert plan.download_seconds == pytest.approx(plan.download_bytes / 50e6)
    assert plan.raw_bytes == pytest.approx(vols.file_bytes.sum())


def test_more_workers_never_take_longer_and_scale_almost_linearly():
    vols = volumes_from_records(synthesise_metadata(4000, np.random.default_rng(2)))
    cost = CostModel(seconds_per_mvoxel=0.08)
    walls = [estimate(vols, cost, w, 8).wall_seconds for w in (1, 4, 16, 64)]
    assert walls == sorted(walls, reverse=True)
    assert walls[0] / walls[2] > 15  # 16 workers: nearly 16x (500 batches, small tail)


def test_costs_fitted_from_a_manifest_predict_its_own_total(tmp_path):
    rows = []
    for i, (shape, seconds, nbytes) in enumerate([((100, 120, 90), 1.3, 900_000), ((60, 70, 80), 0.4, 200_000)]):
        rows.append({**empty_row(f"ds1/sub-{i}/anat/a.nii.gz"), "status": "ok", "shape": list(shape),
                     "crop_bbox": [[0, s] for s in shape], "seconds": seconds, "bytes": nbytes})
    rows.append({**empty_row("ds1/sub-9/anat/bad.nii.gz"), "error": "truncated", "seconds": 9.0})
    write_fragment(tmp_path, rows)
    merge_manifest(tmp_path)
    cost = cost_from_rows(rows, "t")
    out = np.array([100 * 120 * 90, 60 * 70 * 80], float)
    assert cost.seconds(2 * out).sum() == pytest.approx(1.7)  # failed row ignored
    assert cost.stored_bytes_per_voxel * out.sum() == pytest.approx(1_100_000)
    with pytest.raises(ValueError, match="no ok rows"):
        cost_from_rows(rows[2:], "t")
    # the CLI reads the same rows from the store
    result = CliRunner().invoke(main, ["plan", "--from-manifest", str(tmp_path), "--json", "--limit", "1000",
                                       "--workers", "8"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["volumes"] == 1000 and str(tmp_path) in plan["cost_source"]


def test_plan_cli_on_the_sample_metadata(sample_tree):
    csv = sample_tree / "openneuro_metadata.csv"
    result = CliRunner().invoke(main, ["plan", "--metadata", str(csv), "--seconds-per-volume", "2",
                                       "--workers", "2", "--batch-size", "1", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    n = len(read_metadata(csv))
    assert plan["volumes"] == n and plan["tasks"] == n
    assert plan["wall_seconds"] == pytest.approx(math.ceil(n / 2) * (2 + TASK_OVERHEAD_S))


def test_plan_cli_full_dataset_text_report():
    result = CliRunner().invoke(main, ["plan", "--seconds-per-volume", "1", "--workers", "64",
                                       "--memory-limit", "1GiB"])
    assert result.exit_code == 0, result.output
    assert f"{OPENMIND_ROWS:,} volumes (SYNTHESISED" in result.output
    assert "tasks" in result.output and "with --memory-limit 1GiB" in result.output
    refused = int(result.output.split("1GiB: ")[1].split(" volumes refused")[0].replace(",", ""))
    assert 0 < refused < OPENMIND_ROWS  # angio volumes (>16M voxels) exceed 1 GiB / 8 as float32
    hours = float(result.output.split("compute:")[1].split(" h CPU")[0])
    assert hours == pytest.approx(OPENMIND_ROWS / 3600, rel=0.01)


def test_calibration_runs_the_real_path_on_real_mri(sample_tree, tmp_path):
    from openmind_prep.reports.estimate import calibrate

    cost = calibrate(sample_tree, tmp_path, "float16")
    assert "3 volumes" in cost.source  # every sample image went through process_image and was ok
    assert 0 < cost.seconds_per_mvoxel < 10
    # float16 image (<= 2 B/voxel before compression) plus at most two uint8 masks
    assert 0.05 < cost.stored_bytes_per_voxel < 4
    # at least the float32 copy of the input and the SimpleITK buffer; not absurdly more
    assert 4 <= cost.peak_bytes_per_voxel < 200
    assert list((tmp_path / "calibration.zarr").rglob("image/zarr.json"))  # the scratch store was written


def _hours_or_minutes(text: str) -> float:
    """'7.1 h' / '33.0 min' / '2.0 s' → seconds."""
    value, unit = text.split()
    return float(value) * {"h": 3600, "min": 60, "s": 1}[unit]


@pytest.mark.parametrize("workers, bound", [(64, "network"), (1, "compute")])
def test_plan_gives_runs_end_to_end_time_as_the_larger_part(workers, bound):
    """One figure for `run` (it downloads while it preprocesses): the larger of the network time and
    the compute wall time, each read back from the same report; worker counts singular when one."""
    result = CliRunner().invoke(main, ["plan", "--seconds-per-volume", "1", "--workers", str(workers),
                                       "--download-workers", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    run = _hours_or_minutes(out.split("run:       ")[1].split(" end to end")[0])
    network = _hours_or_minutes(out.split("network:   ")[1].split("): ")[1].split(",")[0])
    compute = _hours_or_minutes(out.split("wall time: ")[1].split(" on ")[0])
    assert run == max(network, compute) and run == (network if bound == "network" else compute)
    worker_word = "1 worker\n" if workers == 1 else f"{workers} workers\n"
    assert worker_word in out.split("\n", 1)[0] + "\n"
    assert "1 download worker (--download-workers)" in out and "1 workers" not in out
