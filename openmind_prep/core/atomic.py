"""Atomic writes: write a temp file beside the target, then ``os.replace`` it into place, so a
reader (or a re-run after a kill) sees the old file or the new one, never half of one. Every
writer of the project goes through here (files, JSON, parquet, streamed files, whole folders).

>>> import tempfile
>>> p = Path(tempfile.mkdtemp()) / "x.json"
>>> write_json(p, {}); p.read_text(), [f.name for f in p.parent.iterdir()]
('{}', ['x.json'])
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: concurrent writers


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def remove_temps(folder: Path, pattern: str = "*") -> list[Path]:
    """Remove the temp files a killed writer left in ``folder`` (SIGKILL or power loss skip
    :func:`writing`'s clean-up), for targets whose name matches the glob ``pattern``; returns them.
    Call it only where no other writer can be writing: under the folder's run lock
    (:mod:`openmind_prep.core.runlock`), or alone. Links and folders are never removed.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / ".a.tar.0123abcd.tmp").write_text("half"); _ = (d / "b.tar").write_text("")
    >>> [p.name for p in remove_temps(d, "*.tar")], sorted(p.name for p in d.iterdir())
    (['.a.tar.0123abcd.tmp'], ['b.tar'])
    """
    removed = []
    for tmp in Path(folder).glob(f".{pattern}.*.tmp"):
        if _TEMP_NAME.fullmatch(tmp.name) and not tmp.is_symlink() and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def writing(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it replaces ``path``, on an error it is
    removed. For writers that stream (tar files, copies, CSVs).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with writing(p) as tmp:
    ...     _ = tmp.write_text("done")
    >>> p.read_text(), len(list(p.parent.iterdir()))
    ('done', 1)
    """
    path = Path(path)
    tmp = _temp(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with writing(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, value: Any, *, indent: int | None = None) -> None:
    """Replace ``path`` with ``value`` as JSON atomically."""
    write_text(path, json.dumps(value, indent=indent))


def write_parquet(table, path: Path) -> None:
    """Replace ``path`` with the ``pyarrow.Table`` ``table`` atomically."""
    import pyarrow.parquet as pq

    with writing(path) as tmp:
        pq.write_table(table, tmp)


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
    with writing(path) as tmp:
        write(tmp)
        _fsync(tmp)
        if previous is not None and path.exists():
            os.replace(path, previous)


def replace_dir(folder: Path, dest: Path, trash: Path) -> None:
    """Move the finished ``folder`` to ``dest`` by rename (same file system); an existing ``dest``
    is first renamed into the ``trash`` folder and deleted after, so ``dest`` never holds a mix.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()); (root / "new").mkdir(); (root / "trash").mkdir()
    >>> replace_dir(root / "new", root / "final", root / "trash"); sorted(p.name for p in root.iterdir())
    ['final', 'trash']
    """
    if dest.exists():
        old = Path(trash) / f"{uuid.uuid4().hex}-old"
        os.rename(dest, old)
        os.rename(folder, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(folder, dest)


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from or while handling, says the file system is full
    (ENOSPC / EDQUOT; torch.save wraps it in a RuntimeError). A full disk stops a run (download, preprocess,
    shard, train) with a clear error instead of failing every remaining file one by one.

    >>> disk_full(OSError(errno.ENOSPC, "No space left on device")), disk_full(ValueError("x"))
    (True, False)
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def stop_if_disk_full(error: BaseException, path: Path | str) -> None:
    """Re-raise ``error`` naming ``path`` when it says the disk is full (``write`` raises ENOSPC without a
    file name); a per-file error handler calls it first, so a full disk stops the run instead of failing
    every remaining file.

    >>> stop_if_disk_full(ValueError("x"), "/raw/a.nii.gz")
    >>> stop_if_disk_full(OSError(errno.ENOSPC, "No space left on device"), "/raw/a.nii.gz")
    Traceback (most recent call last):
    OSError: [Errno 28] No space left on device: '/raw/a.nii.gz'
    """
    if disk_full(error):
        code = error.errno if isinstance(error, OSError) and error.errno else errno.ENOSPC
        raise OSError(code, os.strerror(code), str(path)) from error
