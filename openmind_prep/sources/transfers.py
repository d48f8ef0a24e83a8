"""The network and disk side of ``openmind-prep plan``: how long the pull takes under the Hub's request
quota, how much disk the raw and the preprocessed copies need at once, and which command to run next.

Each file is one ``/resolve`` request (image, then each mask; the metadata CSV once). The Hub counts
them per fixed 5-minute window (its rate-limits page: 3,000 per window anonymous, 5,000 for a
free account, more for paid plans), so a full pull of OpenMind (~340k files) is about 68 windows,
hours on its own, whatever the bandwidth. The estimate is the largest of three floors:

- **quota**: ``(ceil(files / quota) - 1) × 300 s`` (the last window's requests go at its start);
- **bandwidth**: ``bytes / bandwidth``;
- **concurrency**: ``files × request_seconds / workers`` (each worker waits one round trip per file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

#: Resolve requests per 5-minute window assumed by default: a free account (the Hub's rate-limits page).
RESOLVE_QUOTA_PER_5MIN = 5_000
#: Assumed wall time of one resolve round trip (request, CDN redirect, first byte), per worker.
REQUEST_SECONDS = 0.3
WINDOW_SECONDS = 300


@dataclass(frozen=True)
class Transfer:
    """A pull of ``files`` files, ``nbytes`` bytes (see the module docstring for the three floors).

    >>> t = Transfer(files=340_000, nbytes=7e11, bandwidth_mb_s=100, quota_per_5min=5000, workers=16)
    >>> round(t.quota_seconds / 3600, 2), round(t.bandwidth_seconds / 3600, 2), t.bound
    (5.58, 1.94, 'quota')
    """

    files: int
    nbytes: float
    bandwidth_mb_s: float
    quota_per_5min: int
    workers: int
    request_seconds: float = REQUEST_SECONDS

    @property
    def quota_seconds(self) -> float:
        return max(0, math.ceil(self.files / self.quota_per_5min) - 1) * WINDOW_SECONDS

    @property
    def bandwidth_seconds(self) -> float:
        return self.nbytes / (self.bandwidth_mb_s * 1e6)

    @property
    def concurrency_seconds(self) -> float:
        return self.files * self.request_seconds / self.workers

    @property
    def seconds(self) -> float:
        return max(self.quota_seconds, self.bandwidth_seconds, self.concurrency_seconds)

    @property
    def bound(self) -> str:
        """Which floor sets the estimate: ``quota``, ``bandwidth`` or ``concurrency``."""
        floors = {"quota": self.quota_seconds, "bandwidth": self.bandwidth_seconds,
                  "concurrency": self.concurrency_seconds}
        return max(floors, key=floors.get)


def suggest_max_raw_gb(file_bytes: Sequence[float], workers: int, batch_size: int) -> int:
    """A ``run --max-raw-gb`` that keeps every worker fed: three batches per worker (two in flight, one
    downloading) of average images, at least the largest batch, at most the whole raw selection.

    >>> suggest_max_raw_gb([6e6] * 10_000, workers=64, batch_size=8)    # 3 x 64 x 8 x 6 MB = 9.2 GB
    10
    >>> suggest_max_raw_gb([6e6] * 10, workers=64, batch_size=8)        # the whole selection: 60 MB
    1
    """
    if not len(file_bytes):
        return 1
    mean = sum(file_bytes) / len(file_bytes)
    largest_batch = sum(sorted(file_bytes)[-batch_size:])
    need = max(3 * workers * batch_size * mean, largest_batch)
    return max(1, math.ceil(min(need, sum(file_bytes)) / 1e9))


def selection_flags(selection, shipped: Sequence[str] = ()) -> list[str]:
    """Command-line flags that reproduce ``selection`` (a shipped name where it is one, plus overrides).

    >>> from openmind_prep.sources.selection import Selection
    >>> selection_flags(Selection(modalities=("T1w", "FLAIR"), max_iqs=2.5, limit=50))
    ['--modality', 'T1w', '--modality', 'FLAIR', '--max-iqs', '2.5', '--limit', '50']
    """
    from openmind_prep.sources.selection import Selection, find_selection, load_selection

    flags: list[str] = []
    base = Selection()
    if selection.name in shipped:
        flags, base = ["--select", selection.name], load_selection(find_selection(selection.name))
    elif (selection.exclude_datasets, selection.include_derived) != (base.exclude_datasets, base.include_derived):
        flags = ["--select", "YOUR_SELECTION.toml"]  # fields without a command-line option
    if selection.modalities != base.modalities:
        flags += [x for m in selection.modalities for x in ("--modality", m)]
    if selection.max_iqs != base.max_iqs and selection.max_iqs is not None:
        flags += ["--max-iqs", f"{selection.max_iqs:g}"]
    if selection.datasets != base.datasets:
        flags += [x for d in selection.datasets for x in ("--dataset", d)]
    if selection.limit != base.limit:
        flags += ["--limit", str(selection.limit)]
    return flags
