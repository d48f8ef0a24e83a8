"""The store's manifest rows (behind :class:`openmind_prep.store.store.Store`, which callers ask): one
parquet row per input image, written as per-batch fragments.

Each batch writes ``STORE/_manifest/<time_ns>-<id>.parquet`` atomically (temp file + rename).
:func:`merge_manifest` folds the fragments into ``STORE/manifest.parquet`` (the newest row per
``image_path`` wins, so a re-run that fixes a failed image replaces its ``failed`` row) and then
deletes them, oldest first, so an interrupted merge can simply be repeated.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from openmind_prep.core.atomic import write_parquet

MANIFEST_DIR = "_manifest"
MANIFEST_FILE = "manifest.parquet"
OK, FAILED = "ok", "failed"

_ints = pa.list_(pa.int64())
_floats = pa.list_(pa.float64())

#: Columns and types of ``manifest.parquet``. Shapes/spacings are zyx (on-disk order).
SCHEMA = pa.schema([
    ("image_path", pa.string()),            # as in the CSV, relative to OpenMind/
    ("status", pa.string()),                # "ok" | "failed"
    ("error", pa.string()),                 # reason when failed, else ""
    ("zarr_path", pa.string()),             # image array inside the store, e.g. <key>/image
    ("anon_mask_zarr_path", pa.string()),   # "" when the image has no defacing mask
    ("anat_mask_zarr_path", pa.string()),   # "" when the image has no foreground mask
    ("shape", _ints),                       # stored (cropped, resampled) shape
    ("spacing", _floats),                   # original spacing in mm
    ("crop_bbox", pa.list_(_ints)),         # [[z0, z1], [y0, y1], [x0, x1]], half-open, original voxels
    ("origin", _floats),                    # SimpleITK's origin of the original image (LPS, x-y-z, mm)
    ("direction", _floats),                 # SimpleITK's direction (row-major 3x3, LPS); see affine.py
    ("modality", pa.string()),
    ("dataset", pa.string()),
    ("subject", pa.string()),
    ("session", pa.string()),
    ("image_quality_score", pa.float64()),
    ("checksum", pa.string()),              # sha256:<hex> of the image array's decoded bytes
    ("anon_mask_checksum", pa.string()),
    ("anat_mask_checksum", pa.string()),
    ("dtype", pa.string()),
    ("bytes", pa.int64()),                  # bytes on disk of the image's group (all arrays)
    ("seconds", pa.float64()),              # wall time spent on this image
])

#: Columns that depend on the run, not on the data (ignored when comparing two stores).
RUN_COLUMNS = ("seconds",)


def empty_row(image_path: str) -> dict:
    """A row with every column at its empty value.

    >>> empty_row("a.nii.gz")["status"], empty_row("a.nii.gz")["shape"]
    ('failed', [])
    """
    row = {name: "" for name in SCHEMA.names}
    row.update(image_path=image_path, status=FAILED, shape=[], spacing=[], crop_bbox=[], origin=[], direction=[],
               image_quality_score=None, bytes=0, seconds=0.0)
    return row


def _table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


_atomic_parquet = write_parquet  # a module attribute: the disk-full test replaces it


def write_fragment(store: Path, rows: list[dict]) -> Path:
    """Write one batch's rows as a new fragment (atomic); returns its path."""
    folder = Path(store) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    _atomic_parquet(_table(rows), path)
    return path


def fragments(store: Path) -> list[Path]:
    """The fragment files not merged yet, oldest first."""
    return sorted((Path(store) / MANIFEST_DIR).glob("*.parquet"))  # oldest first (time prefix)


def current_rows(store: Path) -> dict[str, dict]:
    """The newest row per image_path over manifest.parquet and all fragments."""
    rows: dict[str, dict] = {}
    merged = Path(store) / MANIFEST_FILE
    for path in ([merged] if merged.is_file() else []) + fragments(store):
        for row in _read_parquet(path).to_pylist():
            rows[row["image_path"]] = row
    return rows


def _read_parquet(path: Path) -> pa.Table:
    """One parquet file; ``ParquetFile`` rather than ``read_table``, which imports pyarrow.dataset and
    pandas (~0.3 CPU-s, most of a no-op re-run; so does ``Table.from_pylist``, hence merge_manifest
    returns the file itself when there is nothing to fold in)."""
    try:
        with pq.ParquetFile(path) as f:
            return f.read()
    except pa.ArrowException as e:  # a damaged file: the message names it, as read_table's did
        raise pa.ArrowInvalid(f"{path}: {e}") from None


def merge_manifest(store: Path) -> pa.Table:
    """Fold fragments into ``manifest.parquet`` (rows sorted by image_path); returns the table.

    >>> import tempfile
    >>> s = Path(tempfile.mkdtemp())
    >>> _ = write_fragment(s, [empty_row("b.nii.gz")])
    >>> _ = write_fragment(s, [{**empty_row("a.nii.gz"), "status": "ok"}, empty_row("b.nii.gz")])
    >>> merge_manifest(s).column("image_path").to_pylist(), list((s / MANIFEST_DIR).iterdir())
    (['a.nii.gz', 'b.nii.gz'], [])
    """
    done = fragments(store)
    if not done and (Path(store) / MANIFEST_FILE).is_file():
        return _read_parquet(Path(store) / MANIFEST_FILE)  # nothing new (a no-op re-run): as it is
    rows = current_rows(store)
    table = _table(rows[k] for k in sorted(rows))
    _atomic_parquet(table, Path(store) / MANIFEST_FILE)
    for path in done:
        path.unlink(missing_ok=True)
    return table


def read_manifest(store: Path) -> pa.Table:
    """The merged manifest of a store as a ``pyarrow.Table`` (``.to_pylist()`` for dicts).

    Includes fragments not merged yet (a run still going, or killed before its merge).
    """
    rows = current_rows(store)
    return _table(rows[k] for k in sorted(rows))
