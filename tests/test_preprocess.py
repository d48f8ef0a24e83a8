"""`openmind-prep preprocess` end to end on the embedded real-MRI sample (incl. broken cases):
outputs equal `preprocess_case`, failures get rows, interrupted runs resume to the same store."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from openmind_prep.preprocess import job as pp
from openmind_prep.cli.preprocess import preprocess_command
from openmind_prep.core.dask_cluster import ClusterConfig, dask_client
from openmind_prep.store.manifest import FAILED, MANIFEST_DIR, OK, RUN_COLUMNS, read_manifest
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, read_metadata
from openmind_prep.sources.embedded import BROKEN_DATASET, build_sample_tree
from openmind_prep.store.store import Store
from openmind_prep.reports.verify import verify_store

FAST = ["--workers", "1", "--threads-only"]
BROKEN_KINDS = ("truncgz", "truncnii", "text", "fourd", "zeros", "nan", "missing", "nomask", "badmask")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return build_sample_tree(tmp_path_factory.mktemp("src"), small=True, broken=True)


@pytest.fixture(scope="module")
def full_run(src, tmp_path_factory):
    """One uninterrupted float32 run over the whole sample: (store, CliRunner result)."""
    store = tmp_path_factory.mktemp("full") / "store"
    result = CliRunner().invoke(preprocess_command,
                                [str(src), "--out", str(store), "--dtype", "float32", "--batch-size", "3", *FAST])
    return store, result


def _rows(store: Path) -> dict[str, dict]:
    return {r["image_path"]: r for r in read_manifest(store).to_pylist()}


def _data_columns(row: dict, ignore: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in row.items() if k not in RUN_COLUMNS + ignore}


def _good(src: Path):
    return [r for r in read_metadata(src / METADATA_CSV) if r.dataset != BROKEN_DATASET]


def test_good_images_equal_preprocess_case(src, full_run):
    from openmind_prep.preprocess.onemmiso import preprocess_case

    store, _ = full_run
    rows = _rows(store)
    for record in _good(src):
        row = rows[record.image_path]
        assert row["status"] == OK, row["error"]
        images = src / IMAGES_DIR
        masks = {"anon_mask": images / record.anon_mask_path if record.anon_mask_path else None,
                 "anat_mask": images / record.anat_mask_path if record.anat_mask_path else None}
        expected = preprocess_case(images / record.image_path, masks=masks, dtype=np.float32)
        stored = Store(store).array(row["zarr_path"])
        np.testing.assert_array_equal(stored[...], expected.image)
        assert row["shape"] == list(expected.image.shape) and row["dtype"] == "float32"
        assert row["crop_bbox"] == [[int(a), int(b)] for a, b in expected.crop_bbox]
        assert row["spacing"] == pytest.approx(list(expected.props.spacing))
        assert stored.attrs["crop_bbox"] == row["crop_bbox"] and stored.attrs["image_path"] == record.image_path
        assert (row["modality"], row["dataset"], row["subject"]) == (record.modality, record.dataset, record.subject)
        for name, path in masks.items():
            assert bool(row[f"{name}_zarr_path"]) == (path is not None)
            if path is None:
                continue
            mask = Store(store).array(row[f"{name}_zarr_path"])[...]
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            np.testing.assert_array_equal(mask, expected.masks[name])
            # Right name, checked against the source file: the resampled mask keeps the
            # foreground fraction of the source mask inside the crop box (deface ≈ 0.8, fb ≈ 0.4).
            source = np.asarray(nib.load(path).dataobj).T  # nibabel xyz -> zyx as SimpleITK reads
            box = tuple(slice(a, b) for a, b in row["crop_bbox"])
            assert abs(mask.mean() - (source[box] > 0).mean()) < 0.03, (name, record.image_path)


def test_float16_is_within_1e2_of_float32(src, tmp_path):
    (record,) = [r for r in _good(src) if r.image_path.endswith(".nii")]  # the smallest volume
    rows = [pp.process_image(record, src, tmp_path / s, pp.PreprocessOptions(dtype=d))
            for s, d in (("a", "float16"), ("b", "float32"))]
    assert [r["status"] for r in rows] == [OK, OK] and rows[0]["dtype"] == "float16"
    half = Store(tmp_path / "a").array(rows[0]["zarr_path"])[...]
    full = Store(tmp_path / "b").array(rows[1]["zarr_path"])[...]
    assert half.dtype == np.float16
    assert np.abs(half.astype(np.float32) - full).max() <= 1e-2
    assert rows[0]["bytes"] < rows[1]["bytes"]


def test_each_broken_input_fails_alone_with_a_reason_naming_the_file(src, full_run):
    store, result = full_run
    assert result.exit_code == 1, result.output
    assert f"{len(BROKEN_KINDS)} failed" in result.output and f"{len(_good(src))} ok" in result.output
    rows = _rows(store)
    assert len(rows) == len(_good(src)) + len(BROKEN_KINDS)
    for kind in BROKEN_KINDS:
        (row,) = [r for p, r in rows.items() if f"/sub-{kind}/" in p]
        assert row["status"] == FAILED, kind
        named = "fb_mask.nii.gz" if kind in ("nomask", "badmask") else f"sub-{kind}_T1w.nii"
        assert re.search(rf"sub-{kind}/\S*{re.escape(named)}\S*: \S", row["error"]), row["error"]
        assert row["zarr_path"] == "" and row["checksum"] == ""
        assert not (store / row["image_path"].split(".nii")[0]).exists()  # nothing half-written
        assert f"FAILED {row['error']}" in result.output


class Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_store(src, full_run, tmp_path):
    full_store, _ = full_run
    store = tmp_path / "store"
    records = read_metadata(src / METADATA_CSV)
    options = pp.PreprocessOptions(dtype="float32")
    finished: list[dict] = []

    def stop_after_two_batches(rows):
        finished.extend(rows)
        if len(finished) >= 4:
            raise Killed

    # one batch in flight: nothing else is running when the "kill" comes
    with pytest.raises(Killed), dask_client(ClusterConfig(workers=1, processes=False)) as client:
        pp.run_preprocess(records, src, store, client, options, batch_size=2, max_in_flight=1,
                          on_batch=stop_after_two_batches, progress=False)
    assert not (store / "manifest.parquet").exists() and list((store / MANIFEST_DIR).glob("*.parquet"))
    done = {r["image_path"]: os.stat(store / r["zarr_path"] / "zarr.json").st_ino
            for r in read_manifest(store).to_pylist() if r["status"] == OK}
    assert 0 < len(done) < len(records)

    result = CliRunner().invoke(preprocess_command,
                                [str(src), "--out", str(store), "--dtype", "float32", "--batch-size", "3", *FAST])
    assert result.exit_code == 1 and f"({len(done)} already done)" in result.output, result.output
    for path, inode in done.items():  # finished images were not redone
        assert os.stat(store / _rows(store)[path]["zarr_path"] / "zarr.json").st_ino == inode
    expected = {p: _data_columns(r) for p, r in _rows(full_store).items()}
    assert {p: _data_columns(r) for p, r in _rows(store).items()} == expected


def test_an_ok_row_whose_array_vanished_is_redone(src, full_run, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(full_run[0], store)
    row = _rows(store)[_good(src)[0].image_path]
    shutil.rmtree(store / row["zarr_path"])
    todo = pp.pending(read_metadata(src / METADATA_CSV), store)
    assert _good(src)[0] in todo and len(todo) == 1 + len(BROKEN_KINDS)  # failed ones are retried


def test_a_batch_whose_task_dies_is_split_and_only_the_culprit_fails(src, tmp_path, monkeypatch):
    records = _good(src)
    culprit = records[1].image_path
    real = pp.process_batch

    def dies_on_culprit(batch, *args):
        if any(r.image_path == culprit for r in batch):
            raise MemoryError("worker killed")
        return real(batch, *args)

    monkeypatch.setattr(pp, "process_batch", dies_on_culprit)
    with dask_client(ClusterConfig(workers=1, processes=False)) as client:
        rows = pp.run_preprocess(records, src, tmp_path / "s", client, pp.PreprocessOptions(), batch_size=3,
                                 progress=False)
    status = {r["image_path"]: r for r in rows}
    assert set(status) == {r.image_path for r in records}
    assert status.pop(culprit)["error"].count("worker died") == 1
    assert all(r["status"] == OK for r in status.values())


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_store(src, full_run, tmp_path):
    """A real kill (SIGKILL of the whole process group, Dask workers included) mid-run."""
    store = tmp_path / "store"
    good = [f"--dataset={d}" for d in sorted({r.dataset for r in _good(src)})]
    cmd = [sys.executable, "-c", "from openmind_prep.cli import main; main()", "preprocess", str(src),
           "--out", str(store), "--dtype", "float32", "--batch-size", "1", "--workers", "1", *good]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((store / MANIFEST_DIR).glob("*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(read_manifest(store))
    assert 1 <= n_done < len(_good(src))
    result = CliRunner().invoke(preprocess_command, [str(src), "--out", str(store), "--dtype", "float32", *FAST,
                                                        *good])
    assert result.exit_code == 0 and f"({n_done} already done)" in result.output, result.output
    # The killed run's images were made in a Dask worker process (torch on 1 thread), the
    # reference in this process (torch on all cores): floats may differ in the last bit, so
    # arrays are compared to 1e-4 and their checksums through `verify`; every other column exactly.
    float_columns = ("checksum", "bytes")
    full = {p: r for p, r in _rows(full_run[0]).items() if not p.startswith(BROKEN_DATASET)}
    resumed = _rows(store)
    assert resumed.keys() == full.keys()
    for path, row in resumed.items():
        assert _data_columns(row, float_columns) == _data_columns(full[path], float_columns)
        np.testing.assert_allclose(Store(store).array(row["zarr_path"])[...],
                                   Store(full_run[0]).array(row["zarr_path"])[...], atol=1e-4, rtol=0)
    assert verify_store(store) == []


def test_slurm_jobs_run_single_threaded_workers_with_the_requested_resources():
    from openmind_prep.core.dask_cluster import slurm_cluster

    cluster = slurm_cluster(ClusterConfig(kind="slurm", queue="cpu", cores=6, memory="24GB",
                                          walltime="02:00:00", lifetime="1h50m"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cpu" in script and "#SBATCH -t 02:00:00" in script and "--cpus-per-task=6" in script
    assert "--nworkers 6" in script and "--nthreads 1" in script and "--lifetime 1h50m" in script


def test_the_command_modules_import_no_heavy_libraries():
    """`openmind-prep preprocess --help` stays fast: dask, zarr, torch, SimpleITK load in the command."""
    code = ("import sys, openmind_prep.preprocess.job, openmind_prep.reports.verify, openmind_prep.core.dask_cluster; "
            "print(sorted(m for m in ('dask', 'distributed', 'zarr', 'torch', 'SimpleITK') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_two_rows_with_one_store_key_keep_the_first_and_fail_the_second(tmp_path):
    """``x.nii`` and ``x.nii.gz`` map to one group: the second must not silently replace the first."""
    import gzip

    src = build_sample_tree(tmp_path / "src", small=True)
    first = "ds000003/sub-01/anat/sub-01_T1w.nii"
    twin = first + ".gz"
    raw = (src / IMAGES_DIR / first).read_bytes()
    (src / IMAGES_DIR / twin).write_bytes(gzip.compress(raw[:-2000] + bytes(2000), mtime=0))  # other content
    csv = src / METADATA_CSV
    lines = csv.read_text().splitlines()
    lines.append(next(line for line in lines if line.startswith(first + ",")).replace(first + ",", twin + ",", 1))
    csv.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(preprocess_command, [str(src), "--out", str(store), *FAST])
    assert result.exit_code == 1
    rows = _rows(store)
    assert rows[first]["status"] == OK and rows[twin]["status"] == FAILED
    assert twin in rows[twin]["error"] and "already used by" in rows[twin]["error"]
    from openmind_prep.preprocess.onemmiso import preprocess_case

    again = preprocess_case(src / IMAGES_DIR / first, masks={}, dtype=np.float16).image
    np.testing.assert_array_equal(Store(store).array(rows[first]["zarr_path"])[...], again)
