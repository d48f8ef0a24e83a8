"""Small runs start fast: no cluster when nothing is pending, one local worker runs in this process
(no Dask loaded), one status line while a cluster starts, and ``run`` starts its cluster while the
selection resolves."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

from openmind_prep.core import dask_cluster
from openmind_prep.cli.preprocess import preprocess_command
from openmind_prep.core.dask_cluster import BackgroundClient, ClusterConfig

FAST = ["--workers", "1", "--threads-only"]


def test_a_rerun_with_nothing_pending_starts_no_cluster(sample_tree, tmp_path, monkeypatch):
    def no_cluster(config):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(dask_cluster, "dask_client", no_cluster)  # one worker: in this process
    store = tmp_path / "store"
    first = CliRunner().invoke(preprocess_command, [str(sample_tree), "--out", str(store), *FAST])
    assert first.exit_code == 0, first.output
    assert "running on 1 local worker in this process (no Dask cluster)" in first.stderr
    assert "Dask ready" not in first.stderr
    again = CliRunner().invoke(preprocess_command, [str(sample_tree), "--out", str(store), *FAST])
    assert again.exit_code == 0, again.output
    assert "already done" in again.output and "starting" not in again.stderr


def test_the_cluster_starts_while_the_caller_works_and_failures_reach_get(monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = dask_cluster.dask_client

    def slow_client(config):
        started.set()
        release.wait(10)
        return real(config)

    monkeypatch.setattr(dask_cluster, "dask_client", slow_client)
    lines = []
    with BackgroundClient(ClusterConfig(workers=2, processes=False), status=lines.append) as bg:
        assert started.wait(10)  # the start runs while this thread is free (resolving a selection)
        assert lines == ["starting 2 local Dask workers ..."]
        release.set()
        assert bg.get().submit(sum, [2, 3]).result() == 5
    assert lines[-1].startswith("Dask ready (2 local Dask workers) after ")

    monkeypatch.setattr(dask_cluster, "dask_client", lambda config: (_ for _ in ()).throw(OSError("no port")))
    with BackgroundClient(ClusterConfig(workers=2), status=lines.append) as bg:
        with pytest.raises(OSError, match="no port"):
            bg.get()


def test_one_local_worker_runs_in_process_without_dask_and_writes_the_same_store(sample_tree, tmp_path):
    """``--workers 1``: the tasks run on a thread of the command's process, Dask is never imported,
    and the store equals one written by a Dask cluster of two workers (checksums, row for row)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    code = ("import sys\nfrom openmind_prep.cli import main\ntry:\n    main()\nfinally:\n"
            "    print('LOADED', sorted(m for m in ('distributed', 'dask.distributed', 'torch', 'pandas') if m in sys.modules), "
            "file=sys.stderr)")
    one = subprocess.run([sys.executable, "-c", code, "preprocess", str(sample_tree), "--out", str(tmp_path / "one"),
                          "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    assert "running on 1 local worker in this process" in one.stderr and "LOADED []" in one.stderr
    two = CliRunner().invoke(preprocess_command, [str(sample_tree), "--out", str(tmp_path / "two"), "--workers", "2",
                                                  "--threads-only"])
    assert two.exit_code == 0, two.output

    def checksums(store):
        return sorted((r["image_path"], r["status"], r["checksum"]) for r in
                      pq.read_table(store / "manifest.parquet").to_pylist())

    assert checksums(tmp_path / "one") == checksums(tmp_path / "two")
    assert all(status == "ok" for _, status, _ in checksums(tmp_path / "one"))
