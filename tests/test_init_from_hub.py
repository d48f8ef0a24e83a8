"""``--init-from hf://`` against hostile hubs (issue 23 T12, P21): a missing repo, a dead endpoint and a
silent one end the trainer with one line in seconds (``--hub-deadline`` bounds the fetch)."""

from __future__ import annotations

import time

import pytest

from hf_server import HubFixture
from openmind_prep.sources import retry
from test_net_faults import _dead_port
from trainers import cva

FLAGS = ["--config", "tiny_cpu_mae", "--patch-size", "24", "--threads", "1", "--steps", "1"]


@pytest.fixture
def model_hub(tmp_path, hub_env):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("no checkpoint here\n")
    hub = HubFixture(repo, "AnonRes/Tiny-OpenMind-MAE", repo_type="model")
    yield hub
    hub.close()


def _one_line(train_store, tmp_path, capsys, *extra) -> str:
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        cva.main(["--store", str(train_store), "--out", str(tmp_path / "o"), *FLAGS, *extra])
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("trainers.cva: error: --init-from "), err
    return line


def test_a_repo_that_is_not_there_is_one_line(train_store, model_hub, tmp_path, capsys):  # T12
    line = _one_line(train_store, tmp_path, capsys, "--init-from", "hf://nobody/nothing-here",
                     "--hub-endpoint", model_hub.endpoint)
    assert f"nobody/nothing-here@main: {model_hub.endpoint}/api/models/nobody/nothing-here/revision/main: HTTP 404" \
        in line


def test_a_dead_endpoint_is_one_line_in_seconds(train_store, tmp_path, capsys, monkeypatch):  # P21
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    retry.ANSWERED.clear()
    monkeypatch.setattr(retry, "UNREACHED_BUDGET_S", 2.5)
    line = _one_line(train_store, tmp_path, capsys, "--init-from", "hf://AnonRes/Tiny-OpenMind-MAE",
                     "--hub-endpoint", endpoint)
    assert f"cannot reach the hub at {endpoint} (ConnectError" in line


def test_hub_deadline_bounds_a_silent_hub(train_store, model_hub, tmp_path, capsys):  # P21
    model_hub.faults.hang["info"] = -1
    retry.ANSWERED.set()  # past the first contact: only the deadline ends it
    t0 = time.monotonic()
    line = _one_line(train_store, tmp_path, capsys, "--init-from", "hf://AnonRes/Tiny-OpenMind-MAE",
                     "--hub-endpoint", model_hub.endpoint, "--hub-deadline", "3s")
    assert "--deadline" in line and time.monotonic() - t0 < 15, line
