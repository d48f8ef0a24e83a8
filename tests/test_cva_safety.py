"""Training runs that are safe to interrupt, and that never run code from a config or a checkpoint.

Signals go to real ``python -m trainers.cva`` subprocesses; every resumed run is compared with a
straight run bit for bit (weights and every logged loss), as in ``test_cva_train.py``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from _procs import TINY, torchrun
from trainers import cva

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def store(train_store) -> Path:
    return train_store


def _flags(store: Path, out: Path, *extra: str) -> list[str]:
    return ["--store", str(store), "--out", str(out), *TINY, *extra]


def _errors(captured: str) -> list[str]:
    """stderr's lines less the progress bar's."""
    return [line for line in captured.strip().replace("\r", "\n").splitlines() if not line.startswith("cva:")]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_run(a: dict, b: dict, out_a: Path, out_b: Path) -> None:
    assert a["step"] == b["step"]
    for name in ("student", "teacher"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert [r["step"] for r in _log(out_b)] == list(range(1, b["step"] + 1))
    assert [r["loss"] for r in _log(out_a)] == [r["loss"] for r in _log(out_b)]


@pytest.fixture(scope="module")
def straight(store, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("straight") / "run"
    return cva.train(cva.parse_args(_flags(store, out, "--steps", "12", "--ckpt-every", "100"))), out


@pytest.mark.parametrize("signum, workers, group", [(signal.SIGINT, 0, False), (signal.SIGTERM, 1, True)])
def test_signal_mid_run_saves_and_the_rerun_equals_a_straight_run(store, straight, tmp_path, signum, workers, group):
    out = tmp_path / "run"
    flags = _flags(store, out, "--steps", "12", "--ckpt-every", "100")
    proc = subprocess.Popen([sys.executable, "-m", "trainers.cva", *flags, "--num-workers", str(workers)], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").exists() or len(_log(out)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    if group:  # as a terminal or a batch system does: every process of the run (DataLoader workers too)
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=240)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stdout.strip().splitlines()[-1].startswith(f"{name} at step ")
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= step < 12 and f"{name} at step {step}: checkpoint saved" in stdout
    assert [r["step"] for r in _log(out)] == list(range(1, step + 1))
    resumed = cva.train(cva.parse_args(flags))
    _assert_same_run(straight[0], resumed, straight[1], out)


def test_sigterm_to_a_torchrun_job_saves_one_checkpoint_the_ranks_agree_on(store, tmp_path):
    out = tmp_path / "ddp"
    cmd = torchrun(2, "-m", "trainers.cva", *_flags(store, out, "--steps", "40", "--batch-size", "1"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").exists() or len(_log(out)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both ranks, as a batch system's preemption does
    stdout, _ = proc.communicate(timeout=240)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 3 <= ckpt["step"] < 40 and len(ckpt["rng"]) == 2
    assert ckpt["replicas"][0] == ckpt["replicas"][1]  # both ranks stopped after the same step
    assert f"SIGTERM at step {ckpt['step']}: checkpoint saved" in stdout
    assert [r["step"] for r in _log(out)] == list(range(1, ckpt["step"] + 1))


def test_truncated_latest_checkpoint_falls_back_to_the_previous(store, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    straight = cva.train(cva.parse_args(_flags(store, a, "--steps", "4", "--ckpt-every", "1")))
    cva.train(cva.parse_args(_flags(store, b, "--steps", "4", "--ckpt-every", "1", "--stop-at-step", "2")))
    latest = b / "checkpoint.pt"
    assert torch.load(b / "checkpoint.prev.pt", weights_only=True)["step"] == 1
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    capsys.readouterr()
    resumed = cva.train(cva.parse_args(_flags(store, b, "--steps", "4", "--ckpt-every", "1")))
    said = capsys.readouterr().out
    assert f"{latest}: damaged" in said and "using the previous checkpoint" in said and "(step 1)" in said
    _assert_same_run(straight, resumed, a, b)
    assert [torch.load(b / n, weights_only=True)["step"] for n in ("checkpoint.prev.pt", "checkpoint.pt")] == [3, 4]


class _Payload:
    """Pickles to a call of os.system: what a crafted checkpoint would run on a weights_only=False load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_holding_code_is_refused_without_running_it(store, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    torch.save({"student": _Payload(marker), "teacher": {}, "optimizer": {}, "step": 1, "rng": [], "config": {}},
               out / "checkpoint.pt")
    with pytest.raises(SystemExit) as exit_:
        cva.main(_flags(store, out, "--steps", "2"))
    err = _errors(capsys.readouterr().err)
    assert exit_.value.code == 1 and not marker.exists()
    assert len(err) == 1 and str(out / "checkpoint.pt") in err[0] and "weights_only" in err[0]


@pytest.mark.parametrize("suffix", [".py", ".toml"])
def test_a_config_holding_code_is_refused_without_running_it(tmp_path, capsys, suffix):
    marker, cfg = tmp_path / "pwned", tmp_path / f"evil{suffix}"
    cfg.write_text(f"import os\nos.system('touch {marker}')\nlr = 1.0\n")
    with pytest.raises(SystemExit) as exit_:
        cva.parse_args(["--store", "s", "--out", "o", "--config", str(cfg)])
    err = _errors(capsys.readouterr().err)[-1]
    assert exit_.value.code == 2 and not marker.exists()
    assert str(cfg) in err and "not a TOML config" in err


def test_config_files_merge_in_order_flags_win_and_names_work_anywhere(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('arch = "tiny"\nlr = 0.1\nsteps = 7\n')
    b.write_text("lr = 0.2\ncontrastive = false\n")
    base = ["--store", "s", "--out", "o"]
    args = cva.parse_args([*base, "--config", str(a), "--config", str(b)])
    assert (args.arch, args.lr, args.steps, args.contrastive) == ("tiny", 0.2, 7, False)
    assert cva.parse_args([*base, "--config", str(b), "--config", str(a)]).lr == 0.1
    assert cva.parse_args([*base, "--config", str(a), "--config", str(b), "--lr", "0.3"]).lr == 0.3
    monkeypatch.chdir(tmp_path)  # shipped configs by name, from a folder outside the clone
    shipped = cva.parse_args([*base, "--config", "resenc_l_cva", "--config", "mae_only"])
    assert (shipped.arch, shipped.patch_size, shipped.consistency, shipped.contrastive) == (
        "resenc-l", (128,) * 3, "none", False)
    b.write_text('steps = "many"\n')
    with pytest.raises(SystemExit):
        cva.parse_args([*base, "--config", str(b)])
    assert f"{b}: steps must be int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cva.parse_args([*base, "--config", "no_such_config"])
    on_disk = sorted(p.stem for p in (ROOT / "trainers/configs").glob("*.toml"))
    assert {"tiny_cpu", "resenc_l_cva", "primus_m_cva", "mae_only"} <= set(on_disk)
    assert f"shipped: {', '.join(on_disk)})" in capsys.readouterr().err
    # the wheel carries them: package data covers every shipped config file
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped_files = sorted(p.name for p in (ROOT / "trainers/configs").glob("*.toml"))
    assert data["trainers.configs"] == ["*.toml"] and len(shipped_files) >= 4


def test_restart_without_checkpoint_says_so_and_truncates_the_log(store, tmp_path, capsys):
    out = tmp_path / "run"
    cva.train(cva.parse_args(_flags(store, out, "--steps", "3", "--no-checkpoint")))
    assert [r["step"] for r in _log(out)] == [1, 2, 3]
    capsys.readouterr()
    cva.train(cva.parse_args(_flags(store, out, "--steps", "2", "--no-checkpoint", "--probe-every", "2")))
    said = capsys.readouterr().out
    assert f"no checkpoint in {out}: starting at step 1" in said and "the 3 rows of an earlier run removed" in said
    rows = _log(out)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["probe_loss"]) for r in rows)


def test_a_second_trainer_on_a_running_folder_is_refused_and_changes_nothing(store, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "trainers.cva", *_flags(store, out, "--steps", "10000")], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").exists() or not _log(out):  # running: config written, a step logged
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        config = (out / "config.json").read_bytes()
        with pytest.raises(SystemExit) as exit_:
            cva.main(_flags(store, out, "--steps", "3", "--lr", "1e-4"))
        err = _errors(capsys.readouterr().err)
        assert exit_.value.code == 1 and len(err) == 1, err
        assert err[0] == (f"trainers.cva: error: {out / '_lock'}: another run is using this folder (pid {first.pid} "
                          f"on host {os.uname().nodename} since {err[0].split(' since ')[1]}")
        assert (out / "config.json").read_bytes() == config  # the running trainer's settings are untouched
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    assert not (out / "_lock").exists()  # released on the way out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["lr"] == 2e-3  # the first run's


def test_a_large_architecture_on_a_cpu_asks_for_force_with_an_estimate(store, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cva.main(_flags(store, out, "--arch", "resenc-l", "--patch-size", "128", "--batch-size", "4",
                        "--device", "cpu"))
    err = _errors(capsys.readouterr().err)
    # weights (student, teacher, gradient, 2 AdamW moments: 20 B per parameter; the backbone and tiny_cpu's heads
    # of width 256 on 1120 pooled channels: projector 1120→256→256→256, predictor 256→64→256) + activations
    # of 2 views of 128³ per volume at 4.3 kB per voxel + 0.5 GiB of runtime
    heads = 1120 * 256 + 256 * 256 * 2 + 256 * 64 * 2
    expected = (20 * (102_348_965 + heads) + 4.3e3 * 2 * 4 * 128**3 + 0.5 * 2**30) / 2**30
    assert exit_.value.code == 1 and len(err) == 1
    assert f"about {expected:.0f} GiB" in err[0] and "--force" in err[0] and "resenc-l at 128x128x128" in err[0]
    assert not out.exists()  # refused before anything was built or written


def test_an_empty_or_missing_store_gives_one_line(tmp_path, capsys):
    from openmind_prep.store.manifest import merge_manifest
    from openmind_prep.store.store import Store

    empty = Store.create(tmp_path / "empty").root
    merge_manifest(empty)
    for source, reason in ((empty, "no 'ok' images to train on"), (tmp_path / "nothing", "not a preprocessed store")):
        with pytest.raises(SystemExit) as exit_:
            cva.main(["--store", str(source), "--out", str(tmp_path / "run"), *TINY, "--steps", "1"])
        err = _errors(capsys.readouterr().err)
        assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith(f"trainers.cva: error: {source}: {reason}")


def test_damaged_data_stops_the_run_with_one_line(store, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    for chunk in damaged.glob("**/image/c/**/*"):
        if chunk.is_file():
            os.truncate(chunk, 100)
    with pytest.raises(SystemExit) as exit_:
        cva.main(_flags(damaged, tmp_path / "run", "--steps", "2"))
    err = _errors(capsys.readouterr().err)
    assert exit_.value.code == 1 and len(err) == 1
    assert err[0].startswith("trainers.cva: error: cannot read the data of step 1: ") and "shorter than its index" in err[0]


def test_damaged_data_on_one_rank_stops_every_rank_at_once(store, tmp_path):
    """Two ranks started as a batch system starts them (no torchrun agent to stop the survivors): the rank
    that meets the damaged volume and the other one both exit 1 at the same step with one line each. Before,
    the other rank died with gloo's "Connection closed by peer" traceback (NCCL: waited until its timeout)."""
    import shutil

    from openmind_prep.store.manifest import read_manifest

    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    first = read_manifest(damaged).column("zarr_path")[0].as_py()
    for chunk in (damaged / first).glob("c/**/*"):  # the image array of the first volume
        if chunk.is_file():
            os.truncate(chunk, 100)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "trainers.cva",
                               *_flags(damaged, tmp_path / "ddp", "--steps", "40", "--batch-size", "1")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
    try:
        errs = [_errors(p.communicate(timeout=240)[1]) for p in procs]  # gloo's own timeout is 30 minutes
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [1, 1], errs
    lines = sorted(e[-1] for e in errs)
    step = lines[1].split("data of step ")[1].split(":")[0]
    assert lines[0].startswith(f"trainers.cva: error: another process could not read the data of step {step}; stopping")
    assert lines[1].startswith(f"trainers.cva: error: cannot read the data of step {step}: ")


def test_help_and_version_answer_without_importing_torch():
    code = ("import sys, trainers.cva as c; h = c.get_args_parser().format_help(); "
            "print('torch' in sys.modules, '(default: 0.75)' in h)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "True"], proc.stderr
    proc = subprocess.run([sys.executable, "-m", "trainers.cva", "--version"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    from openmind_prep import __version__

    assert proc.returncode == 0 and proc.stdout.strip() == f"trainers.cva (openmind-prep {__version__})"


def test_a_sigterm_echoed_by_the_launcher_is_not_a_second_request():
    """A batch system signals the process group and torchrun forwards its own copy to the ranks: the two
    SIGTERMs are one request (the rank still saves); a second Ctrl-C still aborts without saving."""
    import signal as sig

    from trainers.runfolder import StopSignals

    with StopSignals() as stop:
        sig.raise_signal(sig.SIGTERM)
        sig.raise_signal(sig.SIGTERM)
    assert stop.name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        with StopSignals():
            sig.raise_signal(sig.SIGINT)
            sig.raise_signal(sig.SIGINT)
