"""Download a selection (or replay a pinned list) into RAW: resolve, optionally write the list, fetch and
verify every file (the repo's metadata CSV among them, byte for byte). One download per RAW folder at
a time (``RAW/.openmind-prep/download.lock``, :mod:`openmind_prep.core.runlock`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openmind_prep.sources.hub import STATE_DIR, HubRepo, download_files
from openmind_prep.sources.metadata import METADATA_CSV


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
