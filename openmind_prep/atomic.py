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
