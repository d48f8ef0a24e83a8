"""Paths read from data, and the one error for a bad input file.

Every path that comes from data (a CSV, a ``pretrain_data.json``, a manifest, a tar member) is
checked here before it is opened: it must stay under the folder it is taken from.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class InputError(ValueError):
    """A bad input file: ``str(e) == f"{path}: {reason}"``.

    >>> str(InputError("a/b.nii.gz", "file not found"))
    'a/b.nii.gz: file not found'
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable across Dask workers
        return (type(self), (str(self.path), self.reason))


def strip_nifti_suffix(path: str) -> str:
    """``a/b.nii.gz`` → ``a/b``; ``a/b.nii`` → ``a/b``.

    >>> strip_nifti_suffix("ds1/sub-1/anat/sub-1_T1w.nii.gz")
    'ds1/sub-1/anat/sub-1_T1w'
    """
    for suffix in (".nii.gz", ".nii"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def leaves_root(path: str) -> bool:
    """Whether a ``/``-separated path read from data (a CSV, a manifest, a tar member) could leave the folder
    it is taken under: absolute, empty, or with an empty, ``.`` or ``..`` part. The one check of that shape
    for every such path (source files, store keys and manifest paths, shard members).

    >>> [leaves_root(p) for p in ("ds1/a.nii.gz", "/etc/passwd", "a/../b", "a//b", "./a", "")]
    [False, True, True, True, True, True]
    """
    return any(part in ("", ".", "..") for part in path.split("/"))


def source_path(images: Path, rel: str) -> Path:
    """``images / rel`` for a path from the CSV, refusing one that leaves the source tree.

    A metadata row must never make a worker read (or the store write) elsewhere: absolute paths,
    ``.``/``..``/empty parts and symlinks resolving outside ``images`` raise ``InputError``.

    >>> source_path(Path("/data/OpenMind"), "ds1/../../etc/passwd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    openmind_prep.core.paths.InputError: /data/OpenMind/ds1/../../etc/passwd: path leaves the source tree ...
    """
    path = Path(images) / rel
    if leaves_root(rel):
        raise InputError(path, "path leaves the source tree (absolute, or a '.', '..' or empty part); refused")
    real = path.resolve()
    if not real.is_relative_to(Path(images).resolve()):
        raise InputError(path, f"resolves outside the source tree (symlink to {real}); refused")
    return path


def special_file(mode: int) -> str:
    """What a ``stat`` mode is when it is neither a regular file nor a folder ('' when it is one of those):
    the one test for "never open it" (a FIFO blocks a reader forever, a device may have side effects).

    >>> special_file(os.stat("/").st_mode), special_file(stat.S_IFIFO | 0o644), special_file(stat.S_IFCHR)
    ('', 'a FIFO', 'a device')
    """
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
        "a special file"


def not_a_regular_file(path: Path) -> str:
    """Why ``path`` is not a regular file to read ('' when it is; ``FileNotFoundError`` when it is missing),
    found with ``stat`` alone, so a FIFO or a device is never opened.

    >>> not_a_regular_file(Path("/"))
    'not a regular file (a directory)'
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return ""
    return f"not a regular file ({special_file(mode) or 'a directory'})"


def read_regular(path: Path) -> bytes:
    """The bytes of the file ``path`` (a CSV, a JSON or TOML listing of a source), refusing anything
    but a regular file with :class:`InputError` before reading: a FIFO put in its place is opened
    without blocking and never read. ``OSError`` (missing, unreadable) as ``open`` raises it.

    >>> read_regular(Path("/"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    openmind_prep.core.paths.InputError: /: not a regular file (a directory); refused
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(path, f"not a regular file ({special_file(mode) or 'a directory'}); refused")
    with open(fd, "rb") as f:
        return f.read()
