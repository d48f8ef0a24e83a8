"""The preprocessed Zarr v3 store as one object (:class:`Store`) that owns its layout, its
manifest, its key namespace and its run lock; ``preprocess``, ``run``, ``shard``, ``verify`` and
the loaders ask it instead of knowing its files.

Layout (``STORE`` is a Zarr v3 group on a local or shared POSIX file system)::

    STORE/zarr.json                              root group; attributes["sources"]: where images came from
    STORE/<image_path without .nii[.gz]>/        one group per image (its key)
        image/      float16|float32, zyx as on disk, z-scored, 1 mm
        anon_mask/  uint8 (defacing mask), only if the image has one
        anat_mask/  uint8 (foreground mask), only if the image has one
        label/      uint8|int16|int32 label map (segmentation), only if the source has one
    STORE/_manifest/*.parquet                    per-batch manifest fragments
    STORE/manifest.parquet                       merged manifest (one row per input image)
    STORE/_tmp/                                  groups being written (never read)
    STORE/_lock                                  the run lock (pid, host) while a run writes

Every array is ONE shard file (zarr's sharding codec) holding inner chunks (64³ by default),
each compressed with blosc (:data:`CODEC`: lz4hc-2 + byte shuffle, one blosc block per chunk, a
zstd-1 second try for chunks lz4hc leaves above 0.65× raw; masks :data:`MASK_CODEC`; every option
measured in ``benchmarks/NOTES.md``: lz4hc decodes 2.5× faster than zstd, lz4hc-2 encodes 3× faster
than lz4hc-4, and the zstd chunks keep the total under half of nnssl's bytes). A group
is first written under ``STORE/_tmp/`` and then renamed to its key, so a killed run never leaves
a half-written array at a final key. Each array's attributes carry ``checksum`` =
``"sha256:<hex>"`` of its decoded C-order bytes in the stored dtype.

Keys never touch the store's own names and never nest (:mod:`openmind_prep.store.namespace`): checked
over the whole selection and the store's ``ok`` rows before anything is written (:meth:`Store.claim`)
and again at each write. Paths read from the manifest are confined to the store (:meth:`Store.path`).
One run writes at a time (:meth:`Store.lock`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from openmind_prep.store import manifest
from openmind_prep.core.atomic import replace_dir, write_json
from openmind_prep.store.case_writer import CODEC, MASK_CODEC, array_checksum, write_group  # noqa: F401  (re-exported)
from openmind_prep.store.schema import ARRAY_COLUMNS, CHECKSUM_COLUMNS, IMAGE, row_key  # noqa: F401  (IMAGE re-exported)
from openmind_prep.core.paths import leaves_root, special_file
from openmind_prep.store.namespace import ancestors, claim, image_key, key_problem  # noqa: F401  (image_key re-exported)
from openmind_prep.core.runlock import LockHeld, run_lock

TMP_DIR = "_tmp"
LOCK_FILE = "_lock"
DTYPES = ("float16", "float32")
_GROUP_META = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class StoreError(ValueError):
    """A store problem; the message is one line naming the path and the reason."""


@dataclass(frozen=True)
class StoredCase:
    """What :meth:`Store.write_case` wrote: array paths inside the store, checksums, bytes on disk."""

    key: str
    zarr_paths: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    nbytes: int = 0

    def columns(self) -> dict:
        """The manifest columns this write fills: array paths, checksums, bytes.

        >>> StoredCase("a", {"image": "a/image"}, {"image": "sha256:0"}, 7).columns()["anat_mask_zarr_path"]
        ''
        """
        return {**{col: self.zarr_paths.get(name, "") for name, col in ARRAY_COLUMNS.items()},
                **{col: self.checksums.get(name, "") for name, col in CHECKSUM_COLUMNS.items()},
                "bytes": self.nbytes}


def _is_image_group(folder: Path) -> bool:
    try:
        return json.loads((folder / IMAGE / "zarr.json").read_text()).get("node_type") == "array"
    except (OSError, ValueError, AttributeError):
        return False


class Store:
    """A preprocessed store at ``root`` (nothing is read or written until asked).

    >>> import tempfile
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
    >>> case = s.write_case("ds1/sub-1/a", {"image": np.ones((3, 4, 5), np.float32)}, {"x": 1})
    >>> _ = s.record([{**manifest.empty_row("ds1/sub-1/a.nii.gz"), "status": "ok", **case.columns()}])
    >>> s.merge().num_rows, s.array("ds1/sub-1/a/image")[:].sum(), s.is_done(s.rows()["ds1/sub-1/a.nii.gz"])
    (1, np.float32(60.0), True)
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @classmethod
    def create(cls, root: str | os.PathLike) -> "Store":
        """Create (or reuse) a store folder with its root group."""
        store = cls(root)
        (store.root / manifest.MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        (store.root / TMP_DIR).mkdir(exist_ok=True)
        if not (store.root / "zarr.json").exists():
            write_json(store.root / "zarr.json", _GROUP_META)
        return store

    @classmethod
    def open(cls, root: str | os.PathLike, *, manifest_required: bool = True) -> "Store":
        """An existing store; :class:`StoreError` (one line) if ``root`` has no manifest to read
        (``manifest_required``) or, without one, no root group."""
        store = cls(root)
        if manifest_required and not store.has_manifest():
            what = "" if (store.root / "zarr.json").is_file() else "; no zarr.json either: not an openmind-prep store"
            raise StoreError(f"{store.root / manifest.MANIFEST_FILE}: missing (and no fragments in "
                             f"{manifest.MANIFEST_DIR}/){what or ': its manifest was deleted or never merged'}")
        if not manifest_required and not (store.root / "zarr.json").is_file():
            raise StoreError(f"{store.root}: not an openmind-prep store (no zarr.json)")
        return store

    # -- provenance --------------------------------------------------------------------------
    def note_source(self, kind: str, root: str | os.PathLike, path: str | os.PathLike | None = None) -> None:
        """Record in the root group's attributes that images came from a source of ``kind`` whose
        image paths (the manifest's ``image_path``) are relative to ``root``; ``path`` is what the user
        named (default ``root``); local paths are kept absolute, URLs (``hf://...``) as they are. A
        store filled from several sources lists each once, in order.

        >>> import tempfile
        >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
        >>> s.note_source("folder", "/data/scans"); s.note_source("folder", "/data/scans"); s.sources()
        [{'kind': 'folder', 'root': '/data/scans', 'path': '/data/scans'}]
        >>> s.note_source("openmind", "hf://datasets/a/b@main/OpenMind"); s.sources()[-1]["root"]
        'hf://datasets/a/b@main/OpenMind'
        """
        where = [str(p) if "://" in str(p) else str(Path(p).absolute()) for p in (root, root if path is None else path)]
        entry = {"kind": str(kind), "root": where[0], "path": where[1]}
        meta = json.loads((self.root / "zarr.json").read_text())
        attributes = meta.setdefault("attributes", {})
        known = attributes.setdefault("sources", [])
        if entry not in known:
            known.append(entry)
            write_json(self.root / "zarr.json", meta)

    def sources(self) -> list[dict]:
        """The sources :meth:`note_source` recorded (``[]`` for a store written before they were)."""
        try:
            return list(json.loads((self.root / "zarr.json").read_text()).get("attributes", {}).get("sources", []))
        except (OSError, ValueError, AttributeError):
            return []

    # -- namespace -------------------------------------------------------------------------
    def claim(self, image_paths: Iterable[str], rows: Mapping[str, dict] | None = None) -> dict[str, str]:
        """``image_path → reason`` for the images that may not get their key: a reserved name, or a
        key equal to, inside or above another image's (the store's ``ok`` rows first, then in order).
        ``rows``: :meth:`rows` if the caller has read them already.

        >>> import tempfile
        >>> Store.create(Path(tempfile.mkdtemp()) / "s").claim(["a.nii", "a.nii.gz", "a/image.nii.gz"])["a.nii.gz"]
        "its store key 'a' is already used by 'a.nii' (same path without .nii/.nii.gz)"
        """
        rows = self.rows() if rows is None else rows
        owned = [(row_key(row), row["image_path"]) for row in rows.values()
                 if row["status"] == manifest.OK and row["zarr_path"]]
        return claim(owned, image_paths)

    def _occupied(self, key: str) -> str:
        """Why writing at ``key`` would replace or nest into another image's group ('' if it would not)."""
        folder = self.root / key
        if folder.exists() and not _is_image_group(folder):
            return "a group of other images is already there"
        parent = next((a for a in ancestors(key) if _is_image_group(self.root / a)), None)
        return f"it lies inside the image group {parent!r}" if parent else ""

    # -- arrays ----------------------------------------------------------------------------
    def write_case(self, key: str, arrays: Mapping[str, np.ndarray], attributes: Mapping[str, Any], *,
                   chunks: int = 64, clevel: int = CODEC["clevel"]) -> StoredCase:
        """Write one image group (``image`` plus masks and label map) atomically at ``key``; replaces that image's
        old group. ``arrays`` are already in the dtype to store; ``attributes`` go on ``image``;
        every array gets its checksum. :class:`StoreError` if ``key`` is not the store's to give."""
        problem = key_problem(key) or self._occupied(key)
        if problem:
            raise StoreError(f"{self.root / key}: {problem}; refused")
        tmp = self.root / TMP_DIR / uuid.uuid4().hex
        checksums, nbytes = write_group(tmp, arrays, attributes, chunks=chunks, clevel=clevel)
        self._ensure_parent_groups(key)
        replace_dir(tmp, self.root / key, self.root / TMP_DIR)
        return StoredCase(key=key, zarr_paths={name: f"{key}/{name}" for name in arrays}, checksums=checksums,
                          nbytes=nbytes)

    def _ensure_parent_groups(self, key: str) -> None:
        parent = self.root
        for part in key.split("/")[:-1]:
            parent = parent / part
            if (parent / "zarr.json").exists():  # the common case: one stat per level
                continue
            parent.mkdir(exist_ok=True)
            if not (parent / "zarr.json").exists():
                write_json(parent / "zarr.json", _GROUP_META)

    def path(self, zarr_path: str) -> Path:
        """The folder of a stored array (``zarr_path`` as in the manifest), refused with
        :class:`StoreError` when it or anything in it leads out of the store or is neither a file
        nor a folder (a FIFO, a device: never opened).

        >>> Store("/data/s").path("../x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        openmind_prep.store.store.StoreError: /data/s: the path '../x' leaves the store ...
        """
        folder, root = self._inside(zarr_path), self.root.resolve()
        entries = [folder]
        for top, dirs, files in os.walk(folder):  # never follows a link: each one is checked instead
            entries += [Path(top) / n for n in dirs + files]
        for entry in entries:
            real = entry.resolve()
            if not real.is_relative_to(root):
                raise StoreError(f"{entry}: resolves outside the store {root} (to {real}); refused")
            try:
                kind = special_file(os.stat(real).st_mode)
            except FileNotFoundError:  # a missing array or a dangling link: the reader says "missing"
                kind = ""
            if kind:  # a FIFO would block every reader; a device is never ours
                raise StoreError(f"{entry}: not a regular file ({kind}); refused")
        return folder

    def _inside(self, zarr_path: str) -> Path:
        """``root / zarr_path`` for a relative path without empty, '.' or '..' parts (no I/O)."""
        if leaves_root(zarr_path) or "\\" in zarr_path:
            raise StoreError(f"{self.root}: the path {zarr_path!r} leaves the store (absolute, or an empty, '.' "
                             "or '..' part); refused")
        return self.root / zarr_path

    def has(self, zarr_path: str) -> bool:
        """Whether the array at ``zarr_path`` was fully written (arrays appear at their final key
        only when complete, so its metadata file is enough). One ``stat`` per array (a resume over
        114k images asks this 340k times): a link out of the store is refused when it is read
        (:meth:`path`), not here."""
        try:
            return (self._inside(zarr_path) / "zarr.json").is_file()
        except StoreError:
            return False

    def array(self, zarr_path: str):
        """One stored array read-only as a ``zarr.Array`` (confined, see :meth:`path`)."""
        import zarr

        return zarr.open_array(str(self.path(zarr_path)), mode="r")

    def group(self):
        """The whole store read-only as a ``zarr.Group``."""
        import zarr

        if not (self.root / "zarr.json").is_file():
            raise StoreError(f"{self.root}: not an openmind-prep store (no zarr.json)")
        return zarr.open_group(str(self.root), mode="r")

    def clear_tmp(self) -> None:
        """Remove leftovers of killed writers. Only while holding :meth:`lock` (or alone)."""
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)
        (self.root / TMP_DIR).mkdir(exist_ok=True)

    # -- manifest (rows in openmind_prep.store.manifest) ------------------------------------------
    def has_manifest(self) -> bool:
        """Whether a merged manifest or any fragment exists."""
        return (self.root / manifest.MANIFEST_FILE).is_file() or bool(manifest.fragments(self.root))

    def rows(self) -> dict[str, dict]:
        """The newest row per image_path (merged manifest and fragments not merged yet)."""
        return manifest.current_rows(self.root)

    def manifest(self):
        """The manifest as a ``pyarrow.Table``, fragments included (sorted by image_path)."""
        return manifest.read_manifest(self.root)

    def ok_rows(self) -> list[dict]:
        """The ``ok`` rows, in manifest order."""
        return [r for r in self.manifest().to_pylist() if r["status"] == manifest.OK]

    def record(self, rows: Sequence[dict]) -> Path:
        """Write one batch's rows as a new manifest fragment (atomic)."""
        return manifest.write_fragment(self.root, list(rows))

    def merge(self):
        """Fold the fragments into ``manifest.parquet``; returns the merged table."""
        return manifest.merge_manifest(self.root)

    def is_done(self, row: dict | None) -> bool:
        """Whether a manifest row is ``ok`` and all its arrays exist at their final keys."""
        if row is None or row["status"] != manifest.OK:
            return False
        return all(self.has(row[col]) for name, col in ARRAY_COLUMNS.items() if name == IMAGE or row[col])

    def pending(self, records: Iterable, rows: Mapping[str, dict] | None = None) -> list:
        """The records (anything with ``.image_path``) that still need work (``rows`` as in :meth:`claim`)."""
        rows = self.rows() if rows is None else rows
        return [r for r in records if not self.is_done(rows.get(r.image_path))]

    # -- one run at a time -------------------------------------------------------------------
    @contextmanager
    def lock(self, command: str = "") -> Iterator[dict]:
        """Hold the store's run lock (:mod:`openmind_prep.core.runlock`); :class:`StoreError` (one line
        naming the holder) when another run holds it."""
        try:
            with run_lock(self.root / LOCK_FILE, command) as me:
                yield me
        except LockHeld as e:
            raise StoreError(str(e)) from None

    @contextmanager
    def reading(self, command: str = "") -> Iterator[None]:
        """Hold the run lock while reading the whole store (``shard``), so no ``preprocess`` or ``run``
        changes it meanwhile (:class:`StoreError` naming the holder when one is running). A store this
        process cannot write (a read-only mount) is read without the lock: no run can write it here."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self.lock(command))
            except OSError as e:
                if not _read_only(e):
                    raise
            yield


def _read_only(error: OSError) -> bool:
    return error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


def as_store(store: "Store | str | os.PathLike") -> Store:
    """``store`` itself, or a :class:`Store` at that path.

    >>> as_store("/data/s") == as_store(Store("/data/s"))
    True
    """
    return store if isinstance(store, Store) else Store(store)

