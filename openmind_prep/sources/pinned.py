"""Pinned lists: a selection resolved into the exact files of one commit of the Hugging Face repo.

A pinned list (JSON, committable under ``manifests/pins/``) names the repo, the revision asked for,
the commit sha it resolved to, the selection, the selected image paths and every file to fetch
(the metadata CSV, each image and its masks) with size, LFS sha256 and git blob id. Replaying a
pinned list (``openmind-prep download --pin FILE``) fetches exactly those bytes or fails naming the file.
A file the CSV lists but the repo lacks at that commit is kept in the pinned list's ``missing``: its
image becomes a ``failed`` row while every other image is fetched.

``RAW/openneuro_metadata.csv`` is the repo's CSV of that commit, byte for byte (verified like every
other file); :func:`downloaded_records` reads from it the images whose files are all in RAW, so
``openmind-prep preprocess RAW`` processes exactly what was downloaded.
"""

from __future__ import annotations

import json
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from openmind_prep.core.atomic import write_text
from openmind_prep.sources.hub import STATE_DIR, HubRepo, RemoteFile, VerifiedState, fetch_verified
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, ImageRecord, read_metadata
from openmind_prep.sources.selection import Selection

PIN_FORMAT = "openmind-prep-pin/1"
#: Formats of files written before the pinned list had its own name; read as the same thing.
OLD_PIN_FORMATS = ("openmind-prep-lock/1",)


@dataclass(frozen=True)
class PinnedList:
    """A resolved selection. ``files[0]`` is the metadata CSV; ``images`` are CSV ``image_path``s;
    ``missing`` the repo paths the CSV lists for them but the repo lacks at ``commit``.

    >>> pin = PinnedList("r/x", "main", "c0ffee", {"name": "t"}, ("a.nii.gz",),
    ...             (RemoteFile("openneuro_metadata.csv", 5, "ab", "cd"),))
    >>> PinnedList.from_dict(pin.to_dict()) == pin
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
        return {"format": PIN_FORMAT, "repo": self.repo, "repo_type": "dataset",
                "revision": self.revision, "commit": self.commit, "selection": self.selection,
                "n_images": len(self.images), "n_files": len(self.files), "bytes": self.total_bytes,
                "images": list(self.images), "files": [f.to_dict() for f in self.files],
                "missing": list(self.missing)}

    @classmethod
    def from_dict(cls, d: dict) -> "PinnedList":
        if not isinstance(d, dict) or d.get("format") not in (PIN_FORMAT, *OLD_PIN_FORMATS):
            raise ValueError(f"not an {PIN_FORMAT} pinned list (format={d.get('format') if isinstance(d, dict) else d!r})")
        for key, kind in (("files", dict), ("images", str), ("missing", str)):
            value = d.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
                raise ValueError(f"{key!r} must be a list of {'objects' if kind is dict else 'strings'}, "
                                 f"not {str(value)[:40]!r}")
        for f in d["files"]:
            if not isinstance(f.get("path"), str) or not isinstance(f.get("size"), int) or f["size"] < 0:
                raise ValueError(f"'files' entry {str(f)[:60]!r}: needs a path (string) and a size (bytes >= 0)")
        files = tuple(RemoteFile.from_dict(f) for f in d["files"])
        if not files or files[0].path != METADATA_CSV:
            raise ValueError(f"the first file of a pinned list must be {METADATA_CSV}")
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
    def read(cls, path: Path) -> "PinnedList":
        """Read a pinned list; a malformed one is an error naming the file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a valid pinned list: {e}") from e


def repo_paths(record: ImageRecord) -> list[str]:
    """Repo-relative paths of an image and its masks.

    >>> from openmind_prep.sources.metadata import record_from_row
    >>> repo_paths(record_from_row({"image_path": "ds1/sub-1/anat/a.nii.gz",
    ...                             "anat_mask_path": "ds1/sub-1/anat/a__Data/fb_mask.nii.gz"}))
    ['OpenMind/ds1/sub-1/anat/a.nii.gz', 'OpenMind/ds1/sub-1/anat/a__Data/fb_mask.nii.gz']
    """
    return [f"{IMAGES_DIR}/{p}" for p in record.files()]


def fetch_metadata(repo: HubRepo, commit: str, raw: Path, remote: RemoteFile | None = None, *,
                   rehash: bool = False) -> tuple[Path, bool]:
    """Download and verify the repo's metadata CSV for ``commit`` into ``RAW/openneuro_metadata.csv``
    (the repo's bytes); returns its path and whether bytes were transferred (False: already there)."""
    remote = remote or repo.paths_info(commit, [METADATA_CSV])[0]
    dest = Path(raw) / METADATA_CSV
    return dest, fetch_verified(repo, commit, remote, dest, raw, VerifiedState(raw, rehash=rehash))


def resolve_pin(repo: HubRepo, selection: Selection, raw: Path, *, progress: bool = False,
                 rehash: bool = False) -> PinnedList:
    """Pin the revision to a commit, fetch its CSV into RAW, select, and look up every file (the
    ones the repo lacks go to ``PinnedList.missing``)."""
    commit = repo.resolve_commit()
    csv_remote = repo.paths_info(commit, [METADATA_CSV])[0]
    csv_path, _ = fetch_metadata(repo, commit, raw, csv_remote, rehash=rehash)
    records = selection.apply(read_metadata(csv_path))
    paths = list(dict.fromkeys(p for r in records for p in repo_paths(r)))
    files, missing = repo.lookup(commit, paths, progress=progress)
    return PinnedList(repo.repo_id, repo.revision, commit, selection.to_dict(),
                tuple(r.image_path for r in records), (csv_remote, *files), tuple(missing))


def open_pin(repo: HubRepo, raw: Path, *, selection: Selection | None = None, pin: PinnedList | None = None,
              progress: bool = False, rehash: bool = False) -> tuple[HubRepo, PinnedList, Path]:
    """Replay ``pin`` (the repo pinned to its repo and commit, its verified metadata CSV fetched) or
    resolve ``selection`` into a new one; returns the repo to fetch from, the pin and the local
    path of the repo's metadata CSV (``raw/openneuro_metadata.csv``). ``rehash``: see ``VerifiedState``."""
    if pin is not None:
        repo = dataclasses.replace(repo, repo_id=pin.repo, revision=pin.commit)
        return repo, pin, fetch_metadata(repo, pin.commit, raw, pin.metadata, rehash=rehash)[0]
    pin = resolve_pin(repo, selection or Selection(), raw, progress=progress, rehash=rehash)
    return repo, pin, Path(raw) / METADATA_CSV


def missing_reason(pin: PinnedList, path: str) -> str:
    """The failure text of a file the list names as missing from the repo.

    >>> missing_reason(PinnedList("r/x", "main", "c0ffee" * 7, {}, (), ()), "OpenMind/a.nii.gz")
    'OpenMind/a.nii.gz: listed in openneuro_metadata.csv but not in r/x@c0ffeec0ffee'
    """
    return f"{path}: listed in {METADATA_CSV} but not in {pin.repo}@{pin.commit[:12]}"


def downloaded_records(root: Path) -> list[ImageRecord]:
    """The records of ``root``'s metadata CSV to preprocess: in a RAW folder written by ``download`` (it
    has ``.openmind-prep/verified.jsonl``) the images whose files are all in RAW (the CSV is the repo's,
    every image of it; only some were downloaded); in any other folder every record."""
    root = Path(root)
    records = read_metadata(root / METADATA_CSV)
    if not (root / STATE_DIR / "verified.jsonl").is_file():
        return records
    return [r for r in records if all((root / p).is_file() for p in repo_paths(r))]


def records_of(pin: PinnedList, full_csv: Path) -> list[ImageRecord]:
    """The pinned list's images as metadata records (in its order), read from the verified CSV."""
    by_path = {r.image_path: r for r in read_metadata(full_csv)}
    missing = [p for p in pin.images if p not in by_path]
    if missing:
        raise ValueError(f"{full_csv}: the pinned list's images {missing[:3]} are not in this CSV")
    return [by_path[p] for p in pin.images]


def group_files(pin: PinnedList, records: Sequence[ImageRecord]) -> list[tuple[ImageRecord, list[RemoteFile]]]:
    """Each record with its files from the pin (image first, then masks); a file the list names as
    missing from the repo comes as a size-0 placeholder (its fetch fails, see :func:`missing_reason`).
    A file the list neither names nor marks missing (a hand-edited list) is a ``ValueError``."""
    by_path = {f.path: f for f in pin.data_files}
    by_path.update((p, RemoteFile(p, 0, None, "")) for p in pin.missing if p not in by_path)
    out = []
    for r in records:
        absent = [p for p in repo_paths(r) if p not in by_path]
        if absent:
            raise ValueError(f"the pinned list names image {r.image_path} but not its file {absent[0]} "
                             "(neither in 'files' nor in 'missing'); re-resolve the pinned list")
        out.append((r, [by_path[p] for p in repo_paths(r)]))
    return out
