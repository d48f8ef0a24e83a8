"""Download a selection (or replay a lock) into RAW: resolve, optionally write the lock, fetch and
verify every file (the repo's metadata CSV among them, byte for byte). One download per RAW folder at
a time (``RAW/.openmind-prep/download.lock``, :mod:`openmind_prep.core.runlock`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openmind_prep.sources.hub import STATE_DIR, HubRepo, download_files
from openmind_prep.sources.metadata import METADATA_CSV


def download(repo: HubRepo, raw: Path, *, selection=None, lock=None, write_lock: Path | None = None,
             lock_only: bool = False, workers: int = 4, progress: bool = True, client=None,
             verify_all: bool = False):
    """Resolve ``selection`` (or replay ``lock``), optionally write the lock, download and verify
    every file into ``raw``, holding ``raw``'s download lock (a second download into the same folder
    is a :class:`~openmind_prep.core.runlock.LockHeld` naming the holder).

    A file the CSV lists but the repo lacks (``Lock.missing``) is reported failed, naming it; every
    other file is still fetched. ``verify_all`` re-hashes files already recorded as verified.
    Returns ``(lock, DownloadReport | None)``: the data files (the metadata CSV in its
    ``metadata_transferred``) and the missing ones, as failed.
    """
    from openmind_prep.core.runlock import run_lock
    from openmind_prep.sources.pinned import missing_reason, open_lock

    raw = Path(raw)
    (raw / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with run_lock(raw / STATE_DIR / "download.lock", "openmind-prep download", what="RAW folder"):
        before = _identity(raw / METADATA_CSV)
        repo, lock, csv_path = open_lock(repo, raw, selection=selection, lock=lock, progress=progress,
                                         rehash=verify_all)
        if write_lock is not None:
            lock.write(write_lock)
        if lock_only:
            return lock, None
        report = download_files(repo, lock.commit, lock.data_files, raw, workers=workers, progress=progress,
                                client=client, verify_all=verify_all)
    missing = tuple((p, missing_reason(lock, p)) for p in lock.missing)
    fetched = before != _identity(csv_path)  # replaced by this run's verified copy
    return lock, dataclasses.replace(report, failed=report.failed + missing, metadata_transferred=fetched)


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``: a verified download replaces the file, so both change."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
