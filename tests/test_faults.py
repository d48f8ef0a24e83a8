"""Faults at scale: a REAL Dask scheduler and workers on 127.0.0.1 (subprocesses), a worker
SIGKILLed mid-run, the CLI SIGKILLed mid-run while the cluster lives on, a full disk, a damaged
array. Every test compares against an uninterrupted local run of the same tree."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.core.dask_cluster import ClusterConfig
from openmind_prep.store.manifest import MANIFEST_DIR, OK, RUN_COLUMNS, read_manifest
from openmind_prep.preprocess.job import PreprocessOptions, preprocess
from openmind_prep.sources.embedded import replicate_tree
from openmind_prep.sources.selection import Selection
from openmind_prep.store.store import TMP_DIR, Store, array_checksum

COPIES = 2  # the small sample (3 real MRI) × 2 datasets = 6 images: long enough to kill mid-run
CLI = [sys.executable, "-c", "from openmind_prep.cli import main; main()"]


@pytest.fixture(scope="module")
def tree(sample_tree, tmp_path_factory) -> Path:
    """The small real-MRI sample replicated under COPIES dataset ids (files and CSV rows)."""
    return replicate_tree(sample_tree, tmp_path_factory.mktemp("faults_tree"), COPIES)


def _rows(store: Path) -> dict[str, dict]:
    return {r["image_path"]: {k: v for k, v in r.items() if k not in RUN_COLUMNS}
            for r in read_manifest(store).to_pylist()}


def _stored_checksums(store: Path) -> dict[str, str]:
    """Checksums recomputed from the decoded arrays on disk (not read from the manifest)."""
    sums = {}
    for meta in sorted(Path(store).rglob("zarr.json")):
        rel = meta.parent.relative_to(store).as_posix()
        if rel.startswith((TMP_DIR, MANIFEST_DIR)) or json.loads(meta.read_text())["node_type"] != "array":
            continue
        sums[rel] = array_checksum(Store(store).array(rel)[...])
    return sums


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory) -> Path:
    """An uninterrupted local run (one in-process worker)."""
    store = tmp_path_factory.mktemp("reference") / "store"
    preprocess(tree, store, Selection(), ClusterConfig(workers=1, processes=False), PreprocessOptions(),
               progress=False)
    rows = _rows(store)
    assert len(rows) == 3 * COPIES and all(r["status"] == OK for r in rows.values())
    return store


def _assert_same_store(store: Path, reference: Path, prefix: str = "") -> None:
    """Same manifest rows (timings aside; every image exactly once) and the same decoded arrays as
    the reference, restricted to image paths starting with ``prefix``."""
    def keep(d: dict) -> dict:
        return {k: v for k, v in d.items() if k.startswith(prefix)}

    assert _rows(store) == keep(_rows(reference))
    assert _stored_checksums(store) == keep(_stored_checksums(reference))
    assert not list((store / TMP_DIR).iterdir()) and not list((store / MANIFEST_DIR).iterdir())


class Cluster:
    """A real ``dask scheduler`` plus ``dask worker`` processes on 127.0.0.1 (random ports)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.workers, self.address = workdir, {}, ""
        scheduler_file = workdir / "scheduler.json"
        self.scheduler = self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)])
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline and self.scheduler.poll() is None, self.log("scheduler")
            time.sleep(0.1)
        time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def add_worker(self, name: str) -> None:
        # no nanny: a SIGKILL takes the worker away for good (nobody restarts it)
        self.workers[name] = self._spawn(name, ["worker", self.address, "--name", name, "--nthreads", "1",
                                                "--no-nanny", "--host", "127.0.0.1", "--no-dashboard",
                                                "--memory-limit", "2GiB", "--death-timeout", "60"])

    def wait_for_workers(self, client, n: int) -> None:
        client.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:  # test processes: no graceful shutdown needed
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path):
    from distributed import Client

    c = Cluster(tmp_path)
    try:
        for name in ("w0", "w1"):
            c.add_worker(name)
        with Client(c.address, timeout=30) as client:
            c.wait_for_workers(client, 2)
        yield c
    finally:
        c.close()


def _preprocess_cli(tree: Path, store: Path, *extra: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "preprocess", str(tree), "--out", str(store), "--batch-size", "1", *extra],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _wait_for_fragment(store: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not list((store / MANIFEST_DIR).glob("*.parquet")):
        assert time.monotonic() < deadline and proc.poll() is None, "no manifest fragment appeared"
        time.sleep(0.02)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, tree, reference, tmp_path):
    from distributed import Client

    store = tmp_path / "store"
    proc = _preprocess_cli(tree, store, "--scheduler", cluster.address, log=tmp_path / "cli.log")
    with Client(cluster.address, timeout=30) as client:
        _wait_for_fragment(store, proc)
        victim = None
        deadline = time.monotonic() + 60
        while victim is None:  # a worker that holds a batch right now
            assert time.monotonic() < deadline and proc.poll() is None, "run ended before a kill"
            info = client.scheduler_info(n_workers=-1)["workers"]
            busy = [info[a]["name"] for a, tasks in client.processing().items() if tasks and a in info]
            victim = next((name for name in busy if name in cluster.workers), None)
            time.sleep(0.01)
        cluster.workers[victim].kill()  # SIGKILL, as the OOM killer or a pre-emption would
        cluster.workers[victim].wait()
        done_at_kill = len(read_manifest(store))
    assert proc.wait(timeout=120) == 0, (tmp_path / "cli.log").read_text()
    assert done_at_kill < 3 * COPIES  # the kill really came mid-run
    _assert_same_store(store, reference)


def test_cli_killed_while_the_cluster_lives_on_resumes_to_the_same_store(cluster, tree, reference, tmp_path):
    """SIGKILL of the client process only (e.g. the login-node driver dies): the scheduler drops
    its tasks, but a batch already running finishes on its worker and may add a fragment after the
    kill. Once those orphans are done, a re-run resumes to a store equal to an uninterrupted run."""
    from distributed import Client

    store = tmp_path / "store"
    proc = _preprocess_cli(tree, store, "--scheduler", cluster.address, log=tmp_path / "cli1.log")
    _wait_for_fragment(store, proc)
    proc.kill()
    proc.wait()
    with Client(cluster.address, timeout=30) as client:  # orphaned batches finish (see docs/faults.md)
        deadline = time.monotonic() + 60
        while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    n_done = len(read_manifest(store))
    assert 1 <= n_done < 3 * COPIES and not (store / "manifest.parquet").exists()
    rerun = _preprocess_cli(tree, store, "--scheduler", cluster.address, log=tmp_path / "cli2.log")
    assert rerun.wait(timeout=120) == 0, (tmp_path / "cli2.log").read_text()
    assert "already done" in (tmp_path / "cli2.log").read_text()
    _assert_same_store(store, reference)


@pytest.mark.parametrize("where", ["array", "manifest"])
def test_disk_full_stops_with_a_clear_error_and_a_rerun_completes(tree, reference, tmp_path, monkeypatch, where):
    """ENOSPC injected into the array writer (after writing half a shard) or into the manifest
    fragment writer, once the first image is done: the run stops with a clear error, only finished
    images have rows, nothing half-written is visible, and a re-run completes."""
    import openmind_prep.store.manifest as manifest
    import openmind_prep.store.zarr_write as zarr_write

    module, name = (zarr_write, "_write_bytes") if where == "array" else (manifest, "_atomic_parquet")
    real, calls = getattr(module, name), []

    first_failing = 4 if where == "array" else 2  # image 1 writes 3 shards (image + 2 masks) / 1 fragment

    def full_after_the_first_image(*args, **kwargs):
        path = Path(args[0] if where == "array" else args[1])
        if where == "manifest" or "/c/" in path.as_posix():  # shard files / manifest fragments
            calls.append(path)
        if len(calls) >= first_failing:
            if where == "array":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(args[1][: len(args[1]) // 2])  # half a shard on disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(*args, **kwargs)

    store, one_copy = tmp_path / "store", ["--dataset", "ds100001", "--dataset", "ds100003"]  # 3 images
    cmd = ["preprocess", str(tree), "--out", str(store), "--workers", "1", "--threads-only", "--batch-size", "1",
           *one_copy]
    monkeypatch.setattr(module, name, full_after_the_first_image)
    runner = CliRunner()
    result = runner.invoke(main, cmd)
    assert result.exit_code == 1 and "disk full while writing" in result.output, result.output
    assert "No space left on device" in result.output
    rows = read_manifest(store).to_pylist()
    assert [r["status"] for r in rows] == [OK]  # the first image, finished before the disk filled
    assert array_checksum(Store(store).array(rows[0]["zarr_path"])[...]) == rows[0]["checksum"]
    second = "ds100003/sub-01/anat/sub-01_T1w"
    assert (store / second / "image").exists() == (where == "manifest")  # complete arrays, but no row: not ok
    assert runner.invoke(main, ["verify", str(store)]).exit_code == 0

    monkeypatch.setattr(module, name, real)  # space freed: the re-run completes
    result = runner.invoke(main, cmd)
    assert result.exit_code == 0 and "(1 already done)" in result.output, result.output
    _assert_same_store(store, reference, prefix="ds1")


def test_verify_finds_damaged_and_missing_arrays(reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    rows = sorted(read_manifest(store).to_pylist(), key=lambda r: r["image_path"])
    flipped, truncated, removed = rows[0]["zarr_path"], rows[1]["zarr_path"], rows[2]["anat_mask_zarr_path"] \
        or rows[2]["zarr_path"]
    (shard,) = [p for p in (store / flipped / "c").rglob("*") if p.is_file()]  # one shard per array
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (shard,) = [p for p in (store / truncated / "c").rglob("*") if p.is_file()]
    shard.write_bytes(shard.read_bytes()[:100])
    shutil.rmtree(store / removed)
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 1
    damaged = [line for line in result.output.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 3, result.output
    for path in (flipped, truncated, removed):
        assert any(str(store / path) in line for line in damaged), path
    assert CliRunner().invoke(main, ["verify", str(reference)]).exit_code == 0
