"""Issue 23, the trainer: non-finite training stops, absurd settings are refused before anything is built,
the run folder's file system (read-only, full) and missing devices give one line, a checkpoint that does not
fit names its tensor. Each input is built here; each answer is one line and an exit code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _procs import TINY
from trainers import cva, runfolder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _flags(store: Path | str, out: Path, *extra: str) -> list[str]:
    return ["--store", str(store), "--out", str(out), *TINY, *extra]


def _errors(captured: str) -> list[str]:
    """stderr's lines less the progress bar's and argparse's usage lines."""
    lines = captured.strip().replace("\r", "\n").splitlines()
    return [line for line in lines if line.startswith("trainers.cva: error:")]


def _main_exit(flags: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_:
        cva.main(flags)
    return exit_.value.code, _errors(capsys.readouterr().err)


def _all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


# ------------------------------------------------------------------ D3: non-finite training stops

def test_a_nan_loss_stops_the_run_with_one_line_keeping_the_last_good_checkpoint(train_store, tmp_path, capsys):
    """--lr 1e30: the first step overshoots, the next loss is NaN. Before: exit 0 and a NaN checkpoint."""
    out = tmp_path / "run"
    code, err = _main_exit(_flags(train_store, out, "--lr", "1e30", "--steps", "4", "--ckpt-every", "1"), capsys)
    assert code == 1 and len(err) == 1, err
    step = int(err[0].split("error: step ")[1].split(":")[0])
    assert step >= 2 and "the loss is not finite (loss = nan" in err[0] and "last checkpoint" in err[0]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == step - 1  # the last good step, saved before; the bad step wrote nothing
    assert _all_finite(ckpt["student"]) and _all_finite(ckpt["teacher"])
    assert not list(out.glob(".*.tmp"))


def test_a_nan_loss_under_ddp_stops_every_rank_after_the_same_step(train_store, tmp_path):
    """Two ranks started as a batch system starts them: both exit 1 with one line naming the same step, none
    waits in a collective, and the checkpoint they agreed on is the last good one."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    procs = [subprocess.Popen([sys.executable, "-m", "trainers.cva", *_flags(train_store, out, "--lr", "1e30",
                                                                             "--steps", "4", "--ckpt-every", "1",
                                                                             "--batch-size", "1")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
    try:
        errs = [_errors(p.communicate(timeout=240)[1]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [1, 1] and all(len(e) == 1 for e in errs), errs
    import re

    said = [re.fullmatch(r"trainers\.cva: error: (?:step (\d+): the loss is not finite \(.*|another process met a "
                         r"non-finite loss or gradient at step (\d+); stopping)", e[0]) for e in errs]
    assert all(said) and "the loss is not finite" in errs[0][0] + errs[1][0], errs
    steps = {int(m.group(1) or m.group(2)) for m in said}
    assert len(steps) == 1, errs  # the same step on both ranks
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == steps.pop() - 1 and _all_finite(ckpt["student"]) and len(ckpt["rng"]) == 2


def test_weights_holding_nan_are_never_written(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    good = {"student": {"w": torch.ones(3)}, "teacher": {"w": torch.ones(3)}, "optimizer": {}, "step": 1,
            "rng": [], "config": {}}
    runfolder.save_checkpoint(out, good)
    before = (out / "checkpoint.pt").read_bytes()
    bad = {**good, "step": 2, "teacher": {"w": torch.tensor([1.0, float("inf"), 0.0])}}
    with pytest.raises(runfolder.RunError, match=r"step 2: teacher weight w is not finite: not saved"):
        runfolder.save_checkpoint(out, bad)
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "checkpoint.prev.pt").exists()


# ------------------------------------------------------------------ absurd settings: exit 2 before anything is built

@pytest.mark.parametrize("flags, says", [
    (["--lr", "nan"], "--lr nan: not a finite number"),
    (["--lr", "inf"], "--lr inf: not a finite number"),
    (["--lr", "0"], "--lr 0: must be above 0 (a learning rate of 0 trains nothing)"),
    (["--temperature", "0"], "--temperature 0.0: must be above 0"),
    (["--temperature=-inf"], "--temperature must not be negative"),
    (["--weight-decay", "inf"], "--weight-decay inf: not a finite number"),
    (["--steps", "99999999999999999999"], "--steps 99999999999999999999: at most 100000000"),
    (["--warmup-steps", "1000000000000"], "--warmup-steps 1000000000000: at most 100000000"),
    (["--region-scale", "1e308"], "--region-scale 1e+308: regions of more than 65536 voxels per axis"),
    (["--region-scale", "inf"], "--region-scale inf: not a finite number"),
    (["--ema-momentum", "1.5"], "--ema-momentum 1.5: a momentum from 0 to 1"),
    (["--seed", "-1"], "--seed -1: 0 to 4294967295"),
    (["--device", "gpu"], "--device gpu: auto, cpu, cuda or cuda:N"),
])
def test_absurd_settings_are_refused_in_one_line(tmp_path, capsys, flags, says):
    out = tmp_path / "run"
    code, err = _main_exit(_flags("no-store-needed", out, *flags), capsys)
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_absurd_settings_built_in_python_are_refused_by_train_itself(tmp_path):
    from trainers.settings import resolve

    out = tmp_path / "run"
    settings = resolve({"store": tmp_path / "s", "out": out, "arch": "tiny", "patch_size": (24,), "device": "cpu",
                        "temperature": float("nan")}, world=1)
    with pytest.raises(runfolder.RunError, match=r"^--temperature nan: not a finite number$"):
        cva.train(settings)
    assert not out.exists()


def test_absurd_settings_in_a_config_file_are_refused_too(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("lr = nan\ntemperature = 0.0\n")  # TOML spells NaN
    code, err = _main_exit(["--store", "s", "--out", str(tmp_path / "run"), "--config", "tiny_cpu", "--config",
                            str(cfg)], capsys)
    assert code == 2 and err == ["trainers.cva: error: --lr nan: not a finite number"]


def _tiny_estimate_gib(patch: int, batch: int, proj_dim: int) -> float:
    """The memory estimate re-typed: 20 B per parameter (backbone 500k + projector 120→P→P→P + predictor
    P→P/4→P), 800 B per voxel of the 2 views of each volume, 0.5 GiB of runtime."""
    heads = 120 * proj_dim + 2 * proj_dim**2 + 2 * proj_dim * (proj_dim // 4)
    return (20 * (500_000 + heads) + 800 * 2 * batch * patch**3 + 0.5 * 2**30) / 2**30


@pytest.mark.parametrize("extra, patch, proj_dim", [(["--patch-size", "512"], 512, 256),
                                                    (["--proj-dim", "1000000000"], 24, 10**9)])
def test_sizes_beyond_the_machine_are_refused_by_the_memory_estimate(train_store, tmp_path, capsys, extra, patch,
                                                                     proj_dim):
    """T6 / T8: before, --patch-size 512 was OOM-killed (exit 137) and --proj-dim 1e9 a 480 GB allocation traceback."""
    out = tmp_path / "run"
    code, err = _main_exit(_flags(train_store, out, *extra), capsys)
    need = _tiny_estimate_gib(patch, 2, proj_dim)
    assert code == 1 and len(err) == 1, err
    assert f"needs about {need:.0f} GiB of memory" in err[0] and "--force" in err[0]
    assert not out.exists()  # refused before anything was built or written


# ------------------------------------------------------------------ devices

@pytest.mark.parametrize("device, gpus, says", [
    ("cuda", 0, "--device cuda: no CUDA device here"),
    ("cuda:7", 0, "--device cuda:7: no CUDA device here"),
    ("cuda:7", 1, "--device cuda:7: no CUDA device 7 here (1 visible)"),
])
def test_a_device_this_machine_lacks_is_refused_not_replaced(tmp_path, capsys, monkeypatch, device, gpus, says):
    """T10 / P19: before, --device cuda died in torch._C and cuda:7 trained on the CPU silently."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    out = tmp_path / "run"
    code, err = _main_exit(_flags("no-store-needed", out, "--device", device), capsys)
    assert code == 1 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_a_gpu_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    """What CUDA raises when the estimate let a run start and the GPU could not hold it (no GPU needed here)."""
    def oom(settings):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 79.19 GiB of which 1.06 GiB is free.")

    monkeypatch.setattr(cva, "train", oom)
    code, err = _main_exit(_flags("no-store-needed", tmp_path / "run"), capsys)
    assert code == 1 and err == ["trainers.cva: error: out of GPU memory (CUDA out of memory; Tried to allocate "
                                 "2.00 GiB): lower --batch-size or --patch-size"]


# ------------------------------------------------------------------ the run folder's file system

def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -rm (user + mount namespaces)")


#: Starts ``sys.argv[2]`` ranks of the trainer (``sys.argv[3:]``) as a batch system does; each rank's stderr
#: into ``sys.argv[1]``/err<rank>; exits with the ranks' return codes as digits (e.g. 11).
_RANKS = """
import os, socket, subprocess, sys
keep, n, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
procs = [subprocess.Popen([sys.executable, "-m", "trainers.cva", *flags], stdout=subprocess.DEVNULL,
                          stderr=open(f"{keep}/err{r}", "w"), env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r),
                          "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(n)]
print("".join(str(p.wait(timeout=240)) for p in procs))
"""


def _in_tmpfs(mount: Path, options: str, keep: Path, trainer_flags: list[str], ranks: int = 0
              ) -> subprocess.CompletedProcess:
    """Run the trainer (``ranks`` > 0: that many DDP ranks, see :data:`_RANKS`) in its own mount namespace with
    a tmpfs (``options``) at ``mount``; what the run left there is copied to ``keep`` (the tmpfs goes with the
    namespace)."""
    script = ('mount -t tmpfs -o "$0" tmpfs "$1" || exit 99; shift; "$@"; rc=$?; '
              f'ls -A "{mount}/run" > "{keep}/listing" 2>/dev/null; cp "{mount}/run/checkpoint.pt" "{keep}/" 2>/dev/null; '
              'exit $rc')
    mount.mkdir()
    keep.mkdir()
    command = ["-c", _RANKS, str(keep), str(ranks)] if ranks else ["-m", "trainers.cva"]
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, options, str(mount), sys.executable, *command,
                           *trainer_flags], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


@needs_mount
def test_out_on_a_read_only_file_system_gives_one_line(train_store, tmp_path):
    """T3: before, `OSError: [Errno 30] Read-only file system` with a traceback."""
    mount = tmp_path / "ro"
    proc = _in_tmpfs(mount, "ro,size=1m", tmp_path / "keep", _flags(train_store, mount / "run", "--steps", "1"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert _errors(proc.stderr) == [f"trainers.cva: error: --out {mount / 'run'}: cannot create the run folder "
                                    "(Read-only file system)"]
    assert "Traceback" not in proc.stderr


@needs_mount
def test_a_checkpoint_on_a_full_disk_says_disk_full_and_keeps_the_earlier_one(train_store, tmp_path):
    """P12: room for one checkpoint (8 MB) in a 12 MB file system, not for the temp copy of the next one.
    Before: `[enforce fail at inline_container.cc:672]`."""
    mount, keep = tmp_path / "full", tmp_path / "keep"
    proc = _in_tmpfs(mount, "size=12m", keep, _flags(train_store, mount / "run", "--steps", "3", "--ckpt-every", "1"))
    latest = mount / "run" / "checkpoint.pt"
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert _errors(proc.stderr) == [f"trainers.cva: error: {latest}: cannot write the checkpoint (disk full); "
                                    "the earlier checkpoints are kept"]
    ckpt = torch.load(keep / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 1 and _all_finite(ckpt["student"])
    assert not [n for n in (keep / "listing").read_text().split() if n.endswith(".tmp")]  # the cut temp file is gone


# ------------------------------------------------------------------ resume: a checkpoint that does not fit

@pytest.fixture(scope="module")
def one_step(train_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_step") / "run"
    cva.train(cva.parse_args(_flags(train_store, out, "--steps", "1")))
    return out


@pytest.mark.parametrize("part", ["student", "optimizer"])
def test_resume_with_a_wrong_shaped_tensor_names_the_key(train_store, one_step, tmp_path, capsys, part):
    """P20: before, `Error(s) in loading state_dict for CVANet:` (no key) or a traceback inside optimizer.step()."""
    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    if part == "student":
        key = next(k for k, v in ckpt["student"].items() if v.dim() == 5)
        ckpt["student"][key] = torch.zeros(3, 1, 2, 2, 2)
        says = f"(student: {key} is [3, 1, 2, 2, 2] in the checkpoint, "
    else:
        state = ckpt["optimizer"]["state"][0]
        key = "exp_avg"
        state[key] = torch.zeros(5)
        says = "(optimizer: exp_avg of backbone."
    torch.save(ckpt, out / "checkpoint.pt")
    code, err = _main_exit(_flags(train_store, out, "--steps", "2"), capsys)
    assert code == 1 and len(err) == 1 and says in err[0] and "use another --out or --no-resume" in err[0], err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1  # nothing overwritten


# ------------------------------------------------------------------ docs/faults.md, run as written

def _documented() -> list[tuple[list[str], int, str]]:
    """(trainer argv, exit code, the error line or its start before "…") of the training section's commands."""
    import re
    import shlex

    section = (ROOT / "docs" / "faults.md").read_text().split("## Training")[1].split("\n## ")[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    found = []
    for command, answer in zip(lines[::2], lines[1::2]):
        code, said = re.fullmatch(r"# exit (\d): (.*)", answer).groups()
        found.append((shlex.split(command)[3:], int(code), said.split("…")[0]))
    return found


def test_the_documented_answers(train_store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the doc's machine has no GPU
    documented = _documented()
    assert len(documented) == 4
    for argv, code, said in documented:
        argv = [str(train_store) if a == "STORE" else a for a in argv]
        got, err = _main_exit([*argv, "--threads", "1"], capsys)
        assert (got, len(err)) == (code, 1) and err[0].startswith(said), (argv, err)


# ------------------------------------------------------------------ P15: a killed write's temp files

def test_temp_files_of_a_killed_checkpoint_write_are_removed_by_the_next_run(train_store, one_step, tmp_path, capsys):
    """What SIGKILL during torch.save leaves (atomic's `.NAME.<8 hex>.tmp` beside the target); before, never removed."""
    out = tmp_path / "run"
    shutil.copytree(one_step, out)
    left = [out / ".checkpoint.pt.0123abcd.tmp", out / ".log.jsonl.89abcdef.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 4096)
    mine = [out / "notes.tmp", out / ".checkpoint.pt.tmp"]  # not atomic's names: not ours to remove
    for path in mine:
        path.write_text("keep")
    cva.main(_flags(train_store, out, "--steps", "1"))  # already at step 1: resumes, nothing to train
    said = capsys.readouterr().out
    assert f"{out}: removed 2 temporary file(s) an interrupted run left: .checkpoint.pt.0123abcd.tmp, " in said
    assert not any(p.exists() for p in left) and all(p.exists() for p in mine)


@needs_mount
def test_a_checkpoint_write_failing_on_rank_0_stops_every_rank(train_store, tmp_path):
    """Two ranks, a disk with room for one checkpoint: rank 0's second write fails, and rank 1, which before
    waited in the barrier after it (gloo: 30 minutes), stops after the same step with one line."""
    mount, keep = tmp_path / "full", tmp_path / "keep"
    proc = _in_tmpfs(mount, "size=12m", keep, _flags(train_store, mount / "run", "--steps", "3", "--ckpt-every", "1",
                                                     "--batch-size", "1"), ranks=2)
    errs = [_errors((keep / f"err{r}").read_text()) for r in range(2)]
    assert proc.stdout.split() == ["11"], (proc.stdout, proc.stderr[-2000:], errs)
    assert errs[0] == [f"trainers.cva: error: {mount / 'run' / 'checkpoint.pt'}: cannot write the checkpoint "
                       "(disk full); the earlier checkpoints are kept"]
    assert errs[1] == ["trainers.cva: error: rank 0 could not write the checkpoint of step 2; stopping"]
    assert torch.load(keep / "checkpoint.pt", weights_only=True)["step"] == 1
