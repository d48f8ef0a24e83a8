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
from openmind_prep.store.schema import RUN_COLUMNS, arrow_schema, complete_row, empty_row  # noqa: F401  (re-exported)

MANIFEST_DIR = "_manifest"
MANIFEST_FILE = "manifest.parquet"
OK, FAILED = "ok", "failed"

#: Columns and types of ``manifest.parquet`` (defined in :mod:`openmind_prep.store.schema`).
SCHEMA = arrow_schema()

#: Columns every manifest file must have (stores written before others were added may lack those).
NEEDED_COLUMNS = ("image_path", "status", "zarr_path", "checksum")


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
            rows[row["image_path"]] = complete_row(row)  # a store written before a column existed
    return rows


def _read_parquet(path: Path) -> pa.Table:
    """One parquet file; ``ParquetFile`` rather than ``read_table``, which imports pyarrow.dataset and
    pandas (~0.3 CPU-s, most of a no-op re-run; so does ``Table.from_pylist``, hence merge_manifest
    returns the file itself when there is nothing to fold in)."""
    try:
        with pq.ParquetFile(path) as f:
            table = f.read()
    except pa.ArrowException as e:  # a damaged file: the message names it, as read_table's did
        raise pa.ArrowInvalid(f"{path}: {e}") from None
    missing = [name for name in NEEDED_COLUMNS if name not in table.column_names]
    if missing:  # rows without them would read as None everywhere
        raise pa.ArrowInvalid(f"{path}: lacks the manifest column(s) {', '.join(missing)}; not a manifest "
                              "openmind-prep wrote (damaged or edited)")
    return table


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
        table = _read_parquet(Path(store) / MANIFEST_FILE)  # nothing new (a no-op re-run): as it is
        if table.schema.equals(SCHEMA):
            return table
        return _table(complete_row(row) for row in table.to_pylist())  # written before a column existed
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
