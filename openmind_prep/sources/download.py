"""Download a selection (or replay a pinned list) into RAW: resolve, optionally write the list, fetch and
verify every file (the repo's metadata CSV among them, byte for byte), as tasks of batches of files on
threads or a Dask cluster (:func:`download_files`). One download per RAW folder at a time
(``RAW/.openmind-prep/download.lock``, :mod:`openmind_prep.core.runlock`)."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from openmind_prep.core.atomic import stop_if_disk_full
from openmind_prep.sources.hub import STATE_DIR, HubRepo, RemoteFile, VerifiedState, fetch_verified
from openmind_prep.sources.metadata import METADATA_CSV
from openmind_prep.sources.retry import ANSWERED, DownloadError, Stalled, reason


def download(repo: HubRepo, raw: Path, *, selection=None, pin=None, write_pin: Path | None = None,
             pin_only: bool = False, workers: int = 4, progress: bool = True, client=None,
             verify_all: bool = False):
    """Resolve ``selection`` (or replay the pinned list ``pin``), optionally write it, download and verify
    every file into ``raw``, holding ``raw``'s download lock (a second download into the same folder
    is a :class:`~openmind_prep.core.runlock.LockHeld` naming the holder).

    A file the CSV lists but the repo lacks (``PinnedList.missing``) is reported failed, naming it; every
    other file is still fetched. ``verify_all`` re-hashes files already recorded as verified.
    Returns ``(pin, DownloadReport | None)``: the data files (the metadata CSV in its
    ``metadata_transferred``) and the missing ones, as failed.
    """
    from openmind_prep.core.runlock import run_lock
    from openmind_prep.sources.pinned import missing_reason, open_pin

    raw = Path(raw)
    (raw / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with run_lock(raw / STATE_DIR / "download.lock", "openmind-prep download", what="RAW folder"):
        before = _identity(raw / METADATA_CSV)
        repo, pin, csv_path = open_pin(repo, raw, selection=selection, pin=pin, progress=progress,
                                         rehash=verify_all)
        if write_pin is not None:
            pin.write(write_pin)
        if pin_only:
            return pin, None
        report = download_files(repo, pin.commit, pin.data_files, raw, workers=workers, progress=progress,
                                client=client, verify_all=verify_all)
    missing = tuple((p, missing_reason(pin, p)) for p in pin.missing)
    fetched = before != _identity(csv_path)  # replaced by this run's verified copy
    return pin, dataclasses.replace(report, failed=report.failed + missing, metadata_transferred=fetched)


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``: a verified download replaces the file, so both change."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@dataclass(frozen=True)
class DownloadReport:
    """What one :func:`download_files` call did."""

    transferred: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (path, reason)
    bytes: int
    metadata_transferred: bool = False  # download: whether the metadata CSV was fetched (else already there)


def fetch_batch(repo: HubRepo, commit: str, batch: Sequence[RemoteFile], raw: Path, *,
                state: VerifiedState | None = None, dest: Callable[[RemoteFile], Path] | None = None,
                on_bytes: Callable[[int], None] | None = None,
                on_file: Callable[[], None] | None = None, rehash: bool = False) -> list[tuple[str, str | bool]]:
    """One download task: fetch and verify each file of ``batch``; per file ``True`` (transferred),
    ``False`` (already verified) or the error text. Runs in a thread here or on a Dask worker that
    shares RAW's file system (then with its own :class:`VerifiedState`, appending to the same record).

    ``dest`` maps a file to its final path (default ``raw / file.path``; a path that leaves ``raw``
    is a per-file failure). ``rehash``: see :class:`VerifiedState` (when ``state`` is not given).
    """
    from openmind_prep.core.paths import source_path

    from collections import Counter, deque

    from openmind_prep.sources.retry import announce

    raw = Path(raw)
    dest = dest or (lambda f: source_path(raw, f.path))
    state = state or VerifiedState(raw, rehash=rehash)
    ANSWERED.set()  # the command reached the hub before it planned this batch
    out: list[tuple[str, str | bool]] = []
    queue, stalls = deque(batch), Counter()
    while queue:
        f = queue.popleft()
        target = raw / f.path
        try:
            target = dest(f)
            moved = fetch_verified(repo, commit, f, target, raw, state, on_bytes)
            out.append((f.path, moved))
            if not moved and on_bytes is not None:
                on_bytes(f.size)
        except Stalled as e:  # after the batch's other files, from where it stopped
            stalls[f.path] += 1
            if stalls[f.path] > repo.policy.retries:
                out.append((f.path, f"{e}; gave up after {stalls[f.path]} stalls"))
            else:
                announce(f"{e}; retry {stalls[f.path]}/{repo.policy.retries} after the other files of its batch")
                queue.append(f)
                continue
        except Exception as e:  # noqa: BLE001 - reported per file
            stop_if_disk_full(e, target)
            out.append((f.path, str(e) if isinstance(e, DownloadError) else f"{f.path}: {reason(e)}"))
        if on_file is not None:
            on_file()
    return out


def download_files(repo: HubRepo, commit: str, files: Iterable[RemoteFile], raw: Path, *,
                   workers: int = 4, batch_size: int = 16, progress: bool = True,
                   dest: Callable[[RemoteFile], Path] | None = None,
                   state: VerifiedState | None = None, client=None, verify_all: bool = False) -> DownloadReport:
    """Download and verify ``files`` into ``raw`` (repo layout) as tasks of ``batch_size`` files,
    at most ``workers`` at a time; failures are collected, never left at final paths.

    Tasks run on local threads, or on the Dask cluster of ``client`` (a ``distributed.Client``
    whose workers share RAW's file system; the bars then advance per finished batch).
    ``dest`` and ``state`` (local threads only) are passed to :func:`fetch_batch`; ``verify_all``
    re-hashes files already recorded as verified (see :class:`VerifiedState`).
    """
    from tqdm.auto import tqdm

    raw = Path(raw)
    files = list(files)
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    total = sum(f.size for f in files)
    files_bar = tqdm(total=len(files), unit="file", desc="files", disable=not progress)
    bytes_bar = tqdm(total=total, unit="B", unit_scale=True, desc="bytes", disable=not progress)
    try:
        if client is None:
            import dask

            lock = threading.Lock()
            state = state or VerifiedState(raw, rehash=verify_all)

            def on_bytes(n: int) -> None:
                with lock:
                    bytes_bar.update(n)

            def on_file() -> None:
                with lock:
                    files_bar.update(1)

            tasks = [dask.delayed(fetch_batch, pure=False)(repo, commit, b, raw, state=state, dest=dest,
                                                           on_bytes=on_bytes, on_file=on_file) for b in batches]
            results = dask.compute(*tasks, scheduler="threads", num_workers=max(1, workers))
        else:
            if dest is not None or state is not None:
                raise ValueError("download_files: dest/state are local-thread options, not for a Dask client")
            results = _on_cluster(client, repo, commit, batches, raw, max(1, workers), files_bar, bytes_bar,
                                  verify_all)
    finally:
        files_bar.close()
        bytes_bar.close()
    done = [r for batch in results for r in batch]
    sizes = {f.path: f.size for f in files}
    transferred = tuple(p for p, r in done if r is True)
    return DownloadReport(
        transferred=transferred,
        skipped=tuple(p for p, r in done if r is False),
        failed=tuple((p, r) for p, r in done if isinstance(r, str)),
        bytes=sum(sizes[p] for p in transferred),
    )


def _on_cluster(client, repo: HubRepo, commit: str, batches: list, raw: Path, in_flight: int,
                files_bar, bytes_bar, rehash: bool = False) -> list:
    """:func:`fetch_batch` tasks on a Dask cluster, at most ``in_flight`` at a time, in order."""
    from collections import deque

    from openmind_prep.core.dask_cluster import bounded_submit

    results: dict[int, list] = {}
    submit = lambda batch: client.submit(fetch_batch, repo, commit, batch, raw, rehash=rehash,  # noqa: E731
                                           pure=False)
    for batch, future in bounded_submit(submit, deque(batches), in_flight):
        done = results[id(batch)] = future.result()  # fetch_batch reports per file; only a dead task raises
        files_bar.update(len(done))
        bytes_bar.update(sum(f.size for f, (_, r) in zip(batch, done) if not isinstance(r, str)))
    return [results[id(batch)] for batch in batches]
