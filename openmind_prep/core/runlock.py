"""One run at a time on a folder: a lock file naming its holder (pid, host, command, start time).

The file is held with ``flock`` for as long as the run lasts, so the kernel frees it when the
holder dies however it dies (``kill -9`` included); where the file system refuses ``flock``, a
record naming a live process of this host counts as held. A second run finds it held and refuses with
one line naming the holder. A file left by a dead run on this host (its ``flock`` is free) is
taken over, with a warning. A file naming another host whose ``flock`` is free is refused too:
this host cannot tell whether that run still lives (file systems that do not share ``flock``
between hosts); the message says to delete the file once that run has ended.

The holder's record is plain data (JSON), read only to explain a refusal; it is never trusted
for anything else.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("openmind_prep")


class LockHeld(RuntimeError):
    """Another run holds the lock; the message is one line naming the file and the holder."""


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0) or 0)))
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {since}"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 1 << 16)
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _held(path: Path, holder: dict, what: str) -> LockHeld:
    return LockHeld(f"{path}: another run is using this {what} ({_describe(holder)}); wait for it to finish or stop it")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True  # another user's process, or a record we cannot read: assume it lives
    return True


def _grab(path: Path, what: str) -> tuple[int, bool]:
    """Open and ``flock`` the lock file (retrying if its holder removed it meanwhile); returns the fd
    and whether ``flock`` works here (some network file systems refuse it: then the record decides)."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise _held(path, holder, what) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            return fd, False
        if _same_file(fd, path):
            return fd, True
        os.close(fd)  # the holder released and removed it between our open and flock: try again
    raise LockHeld(f"{path}: could not take the lock (it keeps being replaced)")


@contextmanager
def run_lock(path: Path, command: str = "", what: str = "store") -> Iterator[dict]:
    """Hold the lock file ``path`` for the ``with`` block; yields this run's holder record. ``what`` names
    the locked thing in a refusal ("store", or a trainer's run "folder").

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "_lock"
    >>> with run_lock(p, "doc") as me:
    ...     try:
    ...         with run_lock(p):
    ...             pass
    ...     except LockHeld as e:
    ...         print("refused:", "another run" in str(e), str(me["pid"]) in str(e))
    refused: True True
    >>> p.exists()
    False
    """
    path = Path(path)
    fd, flocked = _grab(path, what)
    try:
        old = _read(fd)
        host = socket.gethostname()
        if old and not flocked and old.get("host") == host and _alive(old.get("pid")):
            raise _held(path, old, what)  # without flock, a live pid on this host is a live run
        if old.get("host", host) != host:
            raise LockHeld(f"{path}: held by a run on another host ({_describe(old)}); this host cannot check "
                           f"whether it still runs. If it has ended, delete {path} and try again")
        if old:
            log.warning("%s: taking over the lock of a run that ended without releasing it (%s)", path, _describe(old))
        me = {"pid": os.getpid(), "host": host, "started": time.time(),
              "command": command or " ".join(sys.argv[:3])}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        try:
            yield me
        finally:
            if _same_file(fd, path):
                path.unlink(missing_ok=True)  # still flocked: nobody else can hold this inode
    finally:
        os.close(fd)
