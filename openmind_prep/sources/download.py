"""Download a selection (or replay a lock) into RAW: resolve, optionally write the lock, fetch and
verify every file, then write RAW's metadata CSV for the images present."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openmind_prep.sources.hub import HubRepo, download_files


def download(repo: HubRepo, raw: Path, *, selection=None, lock=None, write_lock: Path | None = None,
             lock_only: bool = False, workers: int = 4, progress: bool = True, client=None,
             verify_all: bool = False):
    """Resolve ``selection`` (or replay ``lock``), optionally write the lock, download and verify
    every file into ``raw``, then write ``raw/openneuro_metadata.csv`` for the images present.

    A file the CSV lists but the repo lacks (``Lock.missing``) is reported failed, naming it; every
    other file is still fetched. ``verify_all`` re-hashes files already recorded as verified.
    Returns ``(lock, DownloadReport | None)``.
    """
    from openmind_prep.sources.pinned import missing_reason, open_lock, write_present_csv

    raw = Path(raw)
    repo, lock, full_csv = open_lock(repo, raw, selection=selection, lock=lock, progress=progress,
                                     rehash=verify_all)
    if write_lock is not None:
        lock.write(write_lock)
    if lock_only:
        return lock, None
    report = download_files(repo, lock.commit, lock.data_files, raw, workers=workers, progress=progress,
                            client=client, verify_all=verify_all)
    missing = tuple((p, missing_reason(lock, p)) for p in lock.missing)
    report = dataclasses.replace(report, failed=report.failed + missing)
    write_present_csv(full_csv, raw)
    return lock, report
