"""The run folder a trainer owns, and the signals that stop it cleanly.

``OUT/config.json`` (resolved settings), ``OUT/log.jsonl`` (one JSON row per logged step),
``OUT/loss.png`` and ``OUT/checkpoint.pt`` with the one before it, ``OUT/checkpoint.prev.pt``.

A checkpoint is plain data — tensors, numbers, strings, lists and dicts — written atomically
(:func:`openmind_prep.core.atomic.write_with`) and read with ``torch.load(weights_only=True)``, so a
crafted file cannot run code. If the latest is damaged (truncated, corrupt, or holding pickled
objects), the previous one is used and a line says so. ``log.jsonl`` always ends at the step the
run starts from: rows of steps after the checkpoint (a kill between checkpoints) and every row of
an earlier run that left no checkpoint are dropped, so the log never repeats steps.

>>> import tempfile
>>> out = Path(tempfile.mkdtemp())
>>> _ = (out / "log.jsonl").write_text('{"step": 1}\\n{"step": 2}\\n{"step": 3}\\n')
>>> start_log(out, 2), (out / "log.jsonl").read_text()
(None, '{"step": 1}\\n{"step": 2}\\n')
"""

from __future__ import annotations

import hashlib
import json
import pickle
import signal
import sys
import zipfile
from pathlib import Path
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from openmind_prep.core import atomic
from trainers.sanity import mismatch, optimizer_mismatch

if TYPE_CHECKING:  # torch loads when a run starts
    import torch

    from loaders.batches import BatchSource
    from trainers.resources import Processes

CHECKPOINT, PREVIOUS, LOG, CONFIG, PLOT = "checkpoint.pt", "checkpoint.prev.pt", "log.jsonl", "config.json", "loss.png"
LOCK = "_lock"
_KEYS = ("student", "teacher", "optimizer", "step", "rng", "config")


class RunError(Exception):
    """A problem the user can fix (bad input, an unusable checkpoint): the trainer prints one line, exits 1."""


def error_line(err: BaseException, out: Path) -> str:
    """The one line a trainer prints for ``err``: a :class:`RunError` as it is, a file-system error naming its file
    (the run folder ``out`` when it names none; "disk full"), a GPU out of memory with what it tried.

    >>> import errno
    >>> error_line(OSError(errno.ENOSPC, "No space left on device"), Path("runs/a"))
    'runs/a: disk full'
    >>> error_line(OSError(errno.EROFS, "Read-only file system", "runs/a/config.json"), Path("runs/a"))
    'runs/a/config.json: Read-only file system'
    """
    import torch

    if isinstance(err, torch.OutOfMemoryError):  # the memory estimate let it start, the GPU could not hold it
        return f"out of GPU memory ({'; '.join(str(err).split('. ')[:2])}): lower --batch-size or --patch-size"
    if isinstance(err, OSError):  # read-only, full, gone
        return f"{err.filename or out}: {'disk full' if atomic.disk_full(err) else err.strerror or err}"
    return str(err)


def say(message: str) -> None:
    """One line on stdout, flushed (the trainer's messages; rank 0 only)."""
    print(message, flush=True)


@contextmanager
def hold(out: Path) -> Iterator[None]:
    """One trainer per run folder: rank 0 of the job (as the launcher set it) holds ``OUT/_lock`` (:mod:`openmind_prep.core.runlock`: pid, host, freed
    by the kernel when the process dies) for the run; a second trainer on the folder is a ``RunError``. The temp
    files of an interrupted write in ``OUT`` (a SIGKILL skips their clean-up) are removed once the lock is held.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with hold(out):
    ...     try:
    ...         with hold(out):
    ...             pass
    ...     except RunError as e:
    ...         print("another run is using this folder" in str(e))
    True
    """
    from loaders.ranks import node_rank
    from openmind_prep.core.runlock import LockHeld, run_lock

    if node_rank()[0] != 0:
        yield
        return
    new = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only file system, no permission, a file in the way
        raise RunError(f"--out {out}: cannot create the run folder ({err.strerror or err})") from None
    try:
        with ExitStack() as held:
            try:
                held.enter_context(run_lock(out / LOCK, "trainers.cva", what="folder"))
            except LockHeld as err:
                raise RunError(str(err)) from None
            except OSError as err:
                raise RunError(f"--out {out}: cannot write in the run folder ({err.strerror or err})") from None
            left = atomic.remove_temps(out)  # a killed run's half-written checkpoint (GBs for ResEnc-L), log, config
            if left:
                say(f"{out}: removed {len(left)} temporary file(s) an interrupted run left: "
                    f"{', '.join(sorted(p.name for p in left))}")
            yield
    finally:
        if new and not any(out.iterdir()):  # a run refused before writing leaves no folder behind
            out.rmdir()


def write_config(out: Path, config: dict) -> None:
    """``OUT/config.json``: the resolved settings of the run (also stored in every checkpoint)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")


def start_log(out: Path, step: int) -> str | None:
    """Cut ``OUT/log.jsonl`` to the rows of steps ≤ ``step``; a message when an earlier run's rows were dropped."""
    from trainers.loss_plot import record_resume

    record_resume(out, step)  # loss.png marks where the run was resumed
    path = out / LOG
    if not path.exists():
        return None
    rows = path.read_text(errors="replace").splitlines()
    keep = []
    for line in rows:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut by a kill
            continue
    atomic.write_text(path, "".join(line + "\n" for line in keep))
    dropped = sum(1 for line in rows if line.strip()) - len(keep)
    if step == 0 and dropped:
        return f"{path}: the {dropped} rows of an earlier run removed"
    return None


class StepLog:
    """Per-step rows into ``OUT/log.jsonl`` every ``every`` steps and a progress bar (only where ``enabled``).

    ``probe`` (a function giving the loss on a fixed batch) is added to the first row and every
    ``probe_every`` steps.
    """

    def __init__(self, out: Path, every: int, *, total: int, initial: int, enabled: bool,
                 probe: Callable[[], float] | None = None, probe_every: int = 0, desc: str = "cva") -> None:
        from tqdm.auto import tqdm

        self.out, self.every, self.enabled, self.probe, self.probe_every = out, every, enabled, probe, probe_every
        self.bar = tqdm(total=total, initial=initial, unit="step", desc=desc, disable=not enabled, dynamic_ncols=True)
        self.file = (out / LOG).open("a") if enabled else None

    def __call__(self, step: int, row: dict) -> None:
        """Record step ``step`` (1-based: the number of steps done)."""
        if not self.enabled:
            return
        if step % self.every == 0:
            row = {"step": step, **row}
            if self.probe is not None and (step == 1 or step % self.probe_every == 0):
                row["probe_loss"] = self.probe()
            try:
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
            except OSError as err:  # a full disk names no file: name the log
                atomic.stop_if_disk_full(err, self.out / LOG)
                raise
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", pairs_per_s=f"{row['samples_per_s']:.1f}")

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


def weights_digest(*modules: torch.nn.Module) -> str:
    """sha256 of the modules' state tensors (equal on DDP replicas that are in sync)."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        for t in module.state_dict().values():
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plain data only) to ``OUT/checkpoint.pt`` atomically, keeping the last one as ``.prev``.

    Weights holding NaN or inf are refused (``RunError`` naming the tensor): the checkpoints on disk stay good.
    """
    import torch

    from trainers.sanity import nonfinite_key

    path = out / CHECKPOINT
    for name in ("student", "teacher"):
        key = nonfinite_key(state.get(name, {}))
        if key is not None:
            raise RunError(f"step {state.get('step')}: {name} weight {key} is not finite: not saved, the last "
                           f"checkpoint in {out} is kept (lower --lr)")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: a full disk raises ENOSPC, not torch's "enforce fail"
            torch.save(state, f)

    try:
        atomic.write_with(path, write, previous=out / PREVIOUS)
    except (OSError, RuntimeError) as err:  # disk full, folder gone: the earlier checkpoints stay as they were
        why = "disk full" if atomic.disk_full(err) else (str(err).splitlines() or [""])[0]
        raise RunError(f"{path}: cannot write the checkpoint ({why}); the earlier checkpoints are kept") from None
    return path


def save(out: Path, step: int, *, student: torch.nn.Module, teacher: torch.nn.Module,
         optimizer: torch.optim.Optimizer, source: BatchSource, view_rng: torch.Generator, config: dict,
         procs: Processes) -> None:
    """Checkpoint everything exact resume needs (every rank calls; rank 0 writes; nothing with --no-checkpoint).

    Each rank's RNG states (torch, CUDA, the view sampler's generator) and a sha256 of its student
    and teacher weights (``replicas``: DDP replicas in sync have equal digests) are gathered to rank 0.
    """
    import torch
    import torch.distributed as dist

    if not config["checkpoint"]:
        return
    mine = {"torch": torch.get_rng_state(), "views": view_rng.get_state(),
            "cuda": torch.cuda.get_rng_state(procs.device) if procs.cuda else None,
            "digest": weights_digest(student, teacher)}
    ranks = [mine]
    if procs.world > 1:
        ranks = [None] * procs.world
        dist.all_gather_object(ranks, mine)
    failure = None
    if procs.rank == 0:
        try:
            save_checkpoint(out, {
                "student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "data": source.state_dict(), "rng": ranks, "replicas": [r.pop("digest") for r in ranks],
                "config": config})
        except RunError as err:
            failure = str(err)
    if _max_over_ranks(int(failure is not None), procs.device, procs.world):  # also the barrier: every rank stops
        raise RunError(failure or f"rank 0 could not write the checkpoint of step {step}; stopping")


def restore(ckpt: dict, *, student: torch.nn.Module, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer,
            source: BatchSource, view_rng: torch.Generator, config: dict, procs: Processes) -> int:
    """Load a checkpoint of :func:`save` into this run's objects; returns its step."""
    import torch

    if len(ckpt["rng"]) != procs.world:
        raise RunError(f"the checkpoint was written by {len(ckpt['rng'])} process(es), this run has {procs.world}: "
                       "resume with as many")
    why = mismatch("student", student.state_dict(), ckpt["student"]) or mismatch(
        "teacher", teacher.state_dict(), ckpt["teacher"])
    try:
        if why is None:
            student.load_state_dict(ckpt["student"])
            teacher.load_state_dict(ckpt["teacher"])
            optimizer.load_state_dict(ckpt["optimizer"])
            why = optimizer_mismatch(optimizer, dict(student.named_parameters()))
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        why = (str(err).splitlines() or [""])[0]
    if why is not None:
        differ = sorted(k for k in ("arch", "patch_size", "pool_size", "proj_dim", "contrastive")
                        if ckpt["config"].get(k) != config.get(k))
        why = f"settings differ: {differ}" if differ else why
        raise RunError(f"the checkpoint does not fit this run's networks ({why}); use another --out or --no-resume")
    step = int(ckpt["step"])
    source.load_state_dict(ckpt.get("data", {"position": step}))
    rng = ckpt["rng"][procs.rank]
    torch.set_rng_state(rng["torch"])
    view_rng.set_state(rng["views"])
    if procs.cuda and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], procs.device)
    return step


def _read(path: Path, keys: tuple[str, ...] = _KEYS) -> dict:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise RunError(f"{path}: holds pickled objects, not plain data (refused: torch.load weights_only)") from None
        raise RunError(f"{path}: damaged ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as err:
        raise RunError(f"{path}: damaged ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise RunError(f"{path}: not a trainer checkpoint (needs {', '.join(keys)})")
    return ckpt


def load_checkpoint(out: Path, *, report: Callable[[str], None] | None = say,
                    keys: tuple[str, ...] = _KEYS) -> tuple[dict | None, Path | None]:
    """The newest readable checkpoint of ``OUT`` and its path ((None, None): there is none).

    A damaged latest is reported (``report``) and ``checkpoint.prev.pt`` used; :class:`RunError` when
    checkpoints exist but none can be read.

    >>> import tempfile, torch
    >>> out = Path(tempfile.mkdtemp())
    >>> for step in (1, 2):
    ...     _ = save_checkpoint(out, {"student": {}, "teacher": {}, "optimizer": {}, "step": step, "rng": [], "config": {}})
    >>> _ = (out / CHECKPOINT).write_bytes(b"cut")
    >>> ckpt, path = load_checkpoint(out, report=lambda line: print(line.split("; ")[1]))
    using the previous checkpoint ... (step 1)
    >>> path.name, ckpt["step"]
    ('checkpoint.prev.pt', 1)
    """
    latest, previous = out / CHECKPOINT, out / PREVIOUS
    problems = []
    for path in (latest, previous):
        if not path.exists():
            continue
        try:
            ckpt = _read(path, keys)
        except RunError as err:
            problems.append(str(err))
            continue
        if (problems or path == previous) and report is not None:
            why = problems[0] if problems else f"{latest}: missing (killed while replacing it)"
            report(f"{why}; using the previous checkpoint {path} (step {ckpt['step']})")
        return ckpt, path
    if problems:
        raise RunError(f"{problems[-1]}; no usable checkpoint left: move {out} aside or rerun with --no-resume")
    return None, None


class StopSignals:
    """SIGINT / SIGTERM ask the loop to stop after the current step (a second one aborts at once).

    Use as a context manager in the main thread; :attr:`signum` is the signal received (or None).

    >>> with StopSignals() as stop:
    ...     signal.raise_signal(signal.SIGTERM)
    >>> stop.signum == signal.SIGTERM, stop.name
    (True, 'SIGTERM')
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first = 0.0
        self._old: dict = {}

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    #: A SIGTERM repeated within this many seconds is the same request (a batch system signals the whole
    #: process group and torchrun forwards the launcher's copy to its ranks), not a second one.
    SIGTERM_ECHO_S = 10.0

    def _handle(self, signum: int, frame: Any) -> None:
        import time

        if self.signum is not None:  # the second one: stop without saving
            if signum == signal.SIGTERM == self.signum and time.monotonic() - self._first < self.SIGTERM_ECHO_S:
                return
            raise KeyboardInterrupt
        self.signum, self._first = signum, time.monotonic()
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort without saving)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def raise_if_any_failed(self, failure: str | None, step: int, device: torch.device | None = None,
                            world: int = 1, *, other: str = "could not read the data of") -> None:
        """``RunError`` on every rank when this one (``failure``: why) or another (``other``: what it met) failed
        at ``step`` (one all-reduce across processes; every rank must call), so that a rank meeting damaged data
        or a NaN loss does not leave the others waiting in a collective until it times out."""
        if _max_over_ranks(int(failure is not None), device, world):
            raise RunError(failure or f"another process {other} step {step}; stopping")

    def agreed(self, device: torch.device | None = None, world: int = 1) -> bool:
        """Whether any process was asked to stop (one all-reduce across processes; every rank must call).

        A rank that got no signal itself takes on the one another rank got.
        """
        self.signum = self.signum or (_max_over_ranks(self.signum or 0, device, world) or None)
        return self.signum is not None


def _max_over_ranks(value: int, device: torch.device | None, world: int) -> int:
    """The largest ``value`` of all processes (one all-reduce; every rank must call); ``value`` alone when single."""
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    flag = torch.tensor([value], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())

def plot_losses(out: Path) -> None:
    """Draw ``OUT/log.jsonl`` into ``OUT/loss.png`` (:mod:`trainers.loss_plot`: weights named, resumes marked)."""
    from trainers.loss_plot import save_loss_png

    save_loss_png(out, PLOT)
