"""Lock files: a selection resolved into the exact files of one commit of the Hugging Face repo.

A lock (JSON, committable under ``manifests/locks/``) names the repo, the revision asked for,
the commit sha it resolved to, the selection, the selected image paths and every file to fetch
(the metadata CSV, each image and its masks) with size, LFS sha256 and git blob id. Replaying a
lock (``openmind-prep download --lock FILE``) fetches exactly those bytes or fails naming the file.
A file the CSV lists but the repo lacks at that commit is kept in the lock's ``missing`` list: its
image becomes a ``failed`` row while every other image is fetched.

Inside RAW, the verified repo CSV is kept as ``.openmind-prep/openneuro_metadata.<commit>.csv``
and ``RAW/openneuro_metadata.csv`` lists the rows of the images whose files are all in RAW, so
``openmind-prep preprocess RAW`` processes exactly what was downloaded.
"""

from __future__ import annotations

import csv
import json
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from openmind_prep.core.atomic import write_text, writing
from openmind_prep.sources.hub import STATE_DIR, HubRepo, RemoteFile, VerifiedState, fetch_verified
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, ImageRecord, read_metadata
from openmind_prep.sources.selection import Selection

LOCK_FORMAT = "openmind-prep-lock/1"


@dataclass(frozen=True)
class Lock:
    """A resolved selection. ``files[0]`` is the metadata CSV; ``images`` are CSV ``image_path``s;
    ``missing`` the repo paths the CSV lists for them but the repo lacks at ``commit``.

    >>> lock = Lock("r/x", "main", "c0ffee", {"name": "t"}, ("a.nii.gz",),
    ...             (RemoteFile("openneuro_metadata.csv", 5, "ab", "cd"),))
    >>> Lock.from_dict(lock.to_dict()) == lock
    True
    """

    repo: str
    revision: str
    commit: str
    selection: dict
    images: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    missing: tuple[str, ...] = ()

    @property
    def metadata(self) -> RemoteFile:
        return self.files[0]

    @property
    def data_files(self) -> tuple[RemoteFile, ...]:
        """Images and masks (everything but the CSV)."""
        return self.files[1:]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return {"format": LOCK_FORMAT, "repo": self.repo, "repo_type": "dataset",
                "revision": self.revision, "commit": self.commit, "selection": self.selection,
                "n_images": len(self.images), "n_files": len(self.files), "bytes": self.total_bytes,
                "images": list(self.images), "files": [f.to_dict() for f in self.files],
                "missing": list(self.missing)}

    @classmethod
    def from_dict(cls, d: dict) -> "Lock":
        if d.get("format") != LOCK_FORMAT:
            raise ValueError(f"not an {LOCK_FORMAT} lock (format={d.get('format')!r})")
        files = tuple(RemoteFile.from_dict(f) for f in d["files"])
        if not files or files[0].path != METADATA_CSV:
            raise ValueError(f"the first file of a lock must be {METADATA_CSV}")
        if not re.fullmatch(r"[0-9a-fA-F]{1,64}", str(d["commit"])):
            raise ValueError(f"commit {d['commit']!r} is not a commit id (hex)")
        return cls(d["repo"], d["revision"], d["commit"], dict(d.get("selection", {})),
                   tuple(d["images"]), files, tuple(str(p) for p in d.get("missing", ())))

    def write(self, path: Path) -> Path:
        """Write as indented JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> "Lock":
        """Read a lock file; a malformed one is an error naming the file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a valid lock file: {e}") from e


def repo_paths(record: ImageRecord) -> list[str]:
    """Repo-relative paths of an image and its masks.

    >>> from openmind_prep.sources.metadata import record_from_row
    >>> repo_paths(record_from_row({"image_path": "ds1/sub-1/anat/a.nii.gz",
    ...                             "anat_mask_path": "ds1/sub-1/anat/a__Data/fb_mask.nii.gz"}))
    ['OpenMind/ds1/sub-1/anat/a.nii.gz', 'OpenMind/ds1/sub-1/anat/a__Data/fb_mask.nii.gz']
    """
    return [f"{IMAGES_DIR}/{p}" for p in record.files()]


def full_csv_path(raw: Path, commit: str) -> Path:
    """Where the verified repo CSV of ``commit`` is kept inside RAW."""
    return Path(raw) / STATE_DIR / f"openneuro_metadata.{commit[:12]}.csv"


def fetch_metadata(repo: HubRepo, commit: str, raw: Path, remote: RemoteFile | None = None, *,
                   rehash: bool = False) -> Path:
    """Download and verify the repo's metadata CSV for ``commit``; returns its local path."""
    remote = remote or repo.paths_info(commit, [METADATA_CSV])[0]
    dest = full_csv_path(raw, commit)
    fetch_verified(repo, commit, remote, dest, raw, VerifiedState(raw, rehash=rehash))
    return dest


def resolve_lock(repo: HubRepo, selection: Selection, raw: Path, *, progress: bool = False,
                 rehash: bool = False) -> Lock:
    """Pin the revision to a commit, fetch its CSV into RAW, select, and look up every file (the
    ones the repo lacks go to ``Lock.missing``)."""
    commit = repo.resolve_commit()
    csv_remote = repo.paths_info(commit, [METADATA_CSV])[0]
    records = selection.apply(read_metadata(fetch_metadata(repo, commit, raw, csv_remote, rehash=rehash)))
    paths = list(dict.fromkeys(p for r in records for p in repo_paths(r)))
    files, missing = repo.lookup(commit, paths, progress=progress)
    return Lock(repo.repo_id, repo.revision, commit, selection.to_dict(),
                tuple(r.image_path for r in records), (csv_remote, *files), tuple(missing))


def open_lock(repo: HubRepo, raw: Path, *, selection: Selection | None = None, lock: Lock | None = None,
              progress: bool = False, rehash: bool = False) -> tuple[HubRepo, Lock, Path]:
    """Replay ``lock`` (the repo pinned to its repo and commit, its verified metadata CSV fetched) or
    resolve ``selection`` into a new one; returns the repo to fetch from, the lock and the local
    path of the repo's full metadata CSV (inside ``raw``). ``rehash``: see ``VerifiedState``."""
    if lock is not None:
        repo = dataclasses.replace(repo, repo_id=lock.repo, revision=lock.commit)
        return repo, lock, fetch_metadata(repo, lock.commit, raw, lock.metadata, rehash=rehash)
    lock = resolve_lock(repo, selection or Selection(), raw, progress=progress, rehash=rehash)
    return repo, lock, full_csv_path(raw, lock.commit)


def missing_reason(lock: Lock, path: str) -> str:
    """The failure text of a file the lock lists as missing from the repo.

    >>> missing_reason(Lock("r/x", "main", "c0ffee" * 7, {}, (), ()), "OpenMind/a.nii.gz")
    'OpenMind/a.nii.gz: listed in openneuro_metadata.csv but not in r/x@c0ffeec0ffee'
    """
    return f"{path}: listed in {METADATA_CSV} but not in {lock.repo}@{lock.commit[:12]}"


def write_present_csv(full_csv: Path, raw: Path) -> tuple[Path, int]:
    """Write ``RAW/openneuro_metadata.csv``: the rows of ``full_csv`` whose image and masks all
    exist under ``RAW/OpenMind`` (every file at a final path was verified). Returns (path, rows).
    """
    raw = Path(raw)
    out = raw / METADATA_CSV
    n = 0
    with writing(out) as tmp, open(full_csv, newline="", encoding="utf-8-sig") as src, \
            tmp.open("w", newline="", encoding="utf-8") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        header = next(reader, [])
        writer.writerow(header)
        columns = [header.index(k) for k in ("image_path", "anon_mask_path", "anat_mask_path") if k in header]
        for row in reader:  # rows are copied as they are (a row longer than the header too)
            paths = [row[i].strip() for i in columns if i < len(row)]
            paths = [p for p in paths if p and p.lower() != "nan"]
            if paths and all((raw / IMAGES_DIR / p).is_file() for p in paths):
                writer.writerow(row)
                n += 1
    return out, n


def records_of(lock: Lock, full_csv: Path) -> list[ImageRecord]:
    """The lock's images as metadata records (in lock order), read from the verified CSV."""
    by_path = {r.image_path: r for r in read_metadata(full_csv)}
    missing = [p for p in lock.images if p not in by_path]
    if missing:
        raise ValueError(f"{full_csv}: the lock's images {missing[:3]} are not in this CSV")
    return [by_path[p] for p in lock.images]


def group_files(lock: Lock, records: Sequence[ImageRecord]) -> list[tuple[ImageRecord, list[RemoteFile]]]:
    """Each record with its files from the lock (image first, then masks); a file the lock lists as
    missing from the repo comes as a size-0 placeholder (its fetch fails, see :func:`missing_reason`).
    A file the lock neither lists nor marks missing (a hand-edited lock) is a ``ValueError``."""
    by_path = {f.path: f for f in lock.data_files}
    by_path.update((p, RemoteFile(p, 0, None, "")) for p in lock.missing if p not in by_path)
    out = []
    for r in records:
        absent = [p for p in repo_paths(r) if p not in by_path]
        if absent:
            raise ValueError(f"the lock lists image {r.image_path} but not its file {absent[0]} "
                             "(neither in 'files' nor in 'missing'); re-resolve the lock")
        out.append((r, [by_path[p] for p in repo_paths(r)]))
    return out
