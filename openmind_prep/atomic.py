"""Atomic file writes: write a temp file beside the target, then ``os.replace`` it into place, so a
reader (or a re-run after a kill) sees the old file or the new one, never half of one.

>>> import tempfile
>>> p = Path(tempfile.mkdtemp()) / "x.json"
>>> write_text(p, "{}"); p.read_text(), [f.name for f in p.parent.iterdir()]
('{}', ['x.json'])
"""

from __future__ import annotations

import os
import uuid
from typing import Callable
from pathlib import Path


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: concurrent writers


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    path = Path(path)
    tmp = _temp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_parquet(table, path: Path) -> None:
    """Replace ``path`` with the ``pyarrow.Table`` ``table`` atomically."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = _temp(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_with(path: Path, write: Callable[[Path], None], *, previous: Path | None = None) -> None:
    """Replace ``path`` with what ``write(temp_path)`` writes, flushed to disk first.

    With ``previous``, the file being replaced is kept under that name (a second-to-last copy for
    when the last one turns out damaged). A kill between the two renames leaves ``previous`` and
    no ``path``; readers fall back to ``previous``.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "c.bin"
    >>> for text in ("one", "two"):
    ...     write_with(p, lambda tmp: tmp.write_text(text), previous=p.with_suffix(".prev.bin"))
    >>> p.read_text(), p.with_suffix(".prev.bin").read_text()
    ('two', 'one')
    """
    path = Path(path)
    tmp = _temp(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
