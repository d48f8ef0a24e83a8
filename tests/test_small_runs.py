"""Small runs start fast: no cluster when nothing is pending, one status line while one starts,
and ``run`` starts its cluster while the selection resolves (issue 15)."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

from openmind_prep.core import dask_cluster
from openmind_prep.cli.preprocess import preprocess_command
from openmind_prep.core.dask_cluster import BackgroundClient, ClusterConfig

FAST = ["--workers", "1", "--threads-only"]


def test_a_rerun_with_nothing_pending_starts_no_cluster(sample_tree, tmp_path, monkeypatch):
    store = tmp_path / "store"
    first = CliRunner().invoke(preprocess_command, [str(sample_tree), "--out", str(store), *FAST])
    assert first.exit_code == 0, first.output
    assert "starting 1 local Dask worker ..." in first.stderr and "Dask ready" in first.stderr

    def no_cluster(config):
        raise AssertionError("a cluster was started with nothing to do")

    monkeypatch.setattr(dask_cluster, "dask_client", no_cluster)
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
    with BackgroundClient(ClusterConfig(workers=1, processes=False), status=lines.append) as bg:
        assert started.wait(10)  # the start runs while this thread is free (resolving a selection)
        assert lines == ["starting 1 local Dask worker ..."]
        release.set()
        assert bg.get().submit(sum, [2, 3]).result() == 5
    assert lines[-1].startswith("Dask ready (1 local Dask worker) after ")

    monkeypatch.setattr(dask_cluster, "dask_client", lambda config: (_ for _ in ()).throw(OSError("no port")))
    with BackgroundClient(ClusterConfig(workers=1), status=lines.append) as bg:
        with pytest.raises(OSError, match="no port"):
            bg.get()
