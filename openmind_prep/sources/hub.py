"""Verified, resumable downloads from a Hugging Face dataset repo with the real ``huggingface_hub``.

Why not plain ``hf_hub_download``: it does not check sha256 (a corrupt file of the right size
passes), and it writes to a per-process temp file that is deleted on failure, so an interrupted
9 MB transfer starts over. Here every file goes

    RAW/.openmind-prep/partial/<id>.part  --(size + sha256 check)-->  os.replace  -->  RAW/<path>

so nothing unverified ever sits at a final path. The transfer is one streamed GET on
``huggingface_hub``'s shared HTTP client (its auth headers and request hooks, CDN redirects
followed) resumed from the ``.part`` size with an HTTP ``Range``, with connect and read timeouts
(:class:`HubRepo`). Refused or dropped connections, timeouts, short bodies, 429 and 5xx are retried
as :mod:`openmind_prep.sources.retry` says (the Hub's ``RateLimit`` / ``Retry-After`` honoured, each retry
announced on stderr, a total deadline); a checksum mismatch re-fetches the file once from scratch,
then fails naming it.
Verified files are recorded in ``RAW/.openmind-prep/verified.jsonl`` (path, size, mtime, sha256),
so a re-run skips them without re-hashing; a file whose size or mtime changed is re-hashed.
Metadata (commit, sizes, LFS sha256) comes from ``HfApi`` paths-info in batches: the OpenMind repo
has more than 100k files, so its tree is never listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from openmind_prep.sources.retry import DownloadError, RetryPolicy, ShortTransfer, Stalled, heard, reason, retrying

__all__ = ["DownloadError", "RetryPolicy", "HubRepo", "RemoteFile", "VerifiedState", "fetch_verified",
           "file_digests"]

STATE_DIR = ".openmind-prep"


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo at a commit: size, LFS sha256 (None for plain git files), git blob id.

    >>> RemoteFile("a.csv", 3, None, "x").to_dict()
    {'path': 'a.csv', 'size': 3, 'sha256': None, 'blob_id': 'x'}
    """

    path: str
    size: int
    sha256: str | None
    blob_id: str

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "blob_id": self.blob_id}

    @classmethod
    def from_dict(cls, d: dict) -> "RemoteFile":
        return cls(str(d["path"]), int(d["size"]), d.get("sha256"), str(d.get("blob_id", "")))


@dataclass(frozen=True)
class HubRepo:
    """A dataset repo (or, with ``repo_type="model"``, a model repo) on a hub endpoint
    (``None``: ``HF_ENDPOINT`` or huggingface.co).

    ``token`` None uses the usual HF env/config token (``HF_TOKEN``, ``hf auth login``). Every
    request gives up connecting after ``connect_timeout_s`` and waiting for bytes after
    ``read_timeout_s`` (huggingface_hub's download default, 10 s; then it is retried under ``policy``):
    huggingface_hub's own client has no timeout, so an endpoint that accepts and never answers would
    hang ``HfApi`` calls for ever. A transfer slower than ``min_rate_b_s`` bytes per second over a
    window of ``read_timeout_s`` is a stall (:class:`~openmind_prep.sources.retry.Stalled`): a slow
    drip never resets the read timeout.
    """

    repo_id: str
    revision: str = "main"
    endpoint: str | None = None
    token: str | bool | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    repo_type: str = "dataset"
    min_rate_b_s: float = 1024.0

    def timeout(self):
        """The ``httpx2.Timeout`` of a request starting now: no longer than the deadline leaves.

        >>> import time
        >>> HubRepo("r/x").timeout().read, HubRepo("r/x").timeout().connect
        (10.0, 10.0)
        >>> 4 < HubRepo("r/x", policy=RetryPolicy(deadline=time.time() + 5)).timeout().read <= 5
        True
        """
        import httpx2

        read, connect = self.read_timeout_s, self.connect_timeout_s
        left = self.policy.seconds_left()
        if left is not None:
            read, connect = min(read, max(left, 0.1)), min(connect, max(left, 0.1))
        return httpx2.Timeout(read, connect=connect)

    def session(self):
        """huggingface_hub's shared HTTP client (its auth and request hooks), with our timeouts as its
        default (``HfApi`` calls use the default; the client is re-created after a fork or close)."""
        from huggingface_hub.utils import get_session

        client = get_session()
        wanted = self.timeout()
        if client.timeout != wanted:
            client.timeout = wanted
        hooks = client.event_hooks
        if heard not in hooks.get("response", []):  # every answer: something listens; its RateLimit header
            client.event_hooks = {**hooks, "response": [*hooks.get("response", []), heard]}
        return client

    def api_url(self, *parts: str) -> str:
        """The address of an API request, for messages: ``{endpoint}/api/{type}s/{repo}/...``."""
        from huggingface_hub import constants

        return "/".join([(self.endpoint or constants.ENDPOINT).rstrip("/"), "api", f"{self.repo_type}s",
                         self.repo_id, *parts])

    def ask(self, call, what: str, url: str):
        """``retrying(call)`` for an API request: an answer that is not the JSON asked for, or a refusal
        (404, 401, ...), is a :class:`DownloadError` naming ``url``, never a traceback."""
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return retrying(call, what, self.policy, resource="api")
        except HfHubHTTPError as e:
            raise DownloadError(what, f"{url}: {reason(e)}") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
            raise DownloadError(what, f"{url}: the hub's answer is not what its API returns "
                                      f"({type(e).__name__}: {str(e)[:80]}); is this a Hugging Face endpoint?") from e

    def _api(self):
        from huggingface_hub import HfApi

        self.session()
        return HfApi(endpoint=self.endpoint, token=self.token)

    def resolve_commit(self) -> str:
        """The commit sha the revision points to now (every later request is pinned to it)."""
        info = self.ask(lambda: self._api().repo_info(self.repo_id, repo_type=self.repo_type,
                                                          revision=self.revision, timeout=self.timeout()),
                            f"{self.repo_id}@{self.revision}", self.api_url("revision", self.revision))
        if not info.sha:
            raise DownloadError(self.repo_id, f"the hub returned no commit sha for {self.revision!r}")
        return info.sha

    def lookup(self, commit: str, paths: Sequence[str], *, batch: int = 500,  # hub max: 1000
               progress: bool = False) -> tuple[list[RemoteFile], list[str]]:
        """Size, LFS sha256 and blob id of each path the repo has at ``commit`` (in order), and the
        paths it does not have; ``batch`` paths per request."""
        from tqdm.auto import tqdm

        found: dict[str, RemoteFile] = {}
        for start in tqdm(range(0, len(paths), batch), desc="paths-info", unit="req",
                          disable=not progress or len(paths) <= batch):
            chunk = list(paths[start:start + batch])
            url = self.api_url("paths-info", commit)
            found.update(self.ask(lambda: self._files(chunk, commit), f"paths-info ({chunk[0]} ...)", url))
        return [found[p] for p in paths if p in found], [p for p in paths if p not in found]

    def _files(self, chunk: list[str], commit: str) -> dict[str, RemoteFile]:
        entries = self._api().get_paths_info(self.repo_id, chunk, repo_type=self.repo_type, revision=commit)
        return {e.path: RemoteFile(e.path, int(e.size), e.lfs.sha256 if e.lfs else None, e.blob_id)
                for e in entries if hasattr(e, "blob_id")}  # a file, not a folder

    def paths_info(self, commit: str, paths: Sequence[str], *, batch: int = 500,
                   progress: bool = False) -> list[RemoteFile]:
        """:meth:`lookup` of paths that must all exist: raises :class:`DownloadError` naming the
        paths the repo does not have at ``commit``."""
        files, missing = self.lookup(commit, paths, batch=batch, progress=progress)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DownloadError(missing[0], f"not in {self.repo_id}@{commit[:12]}: {shown}")
        return files

    def url(self, commit: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, path, repo_type=self.repo_type, revision=commit, endpoint=self.endpoint)


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one pass.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"hi")
    >>> file_digests(p)[1]  # same as `git hash-object`
    '32f95c0d1244a78b2be1bab8de17906fabb2c4a8'
    """
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _matches(remote: RemoteFile, digests: tuple[str, str]) -> bool:
    return digests[0] == remote.sha256 if remote.sha256 else digests[1] == remote.blob_id


class VerifiedState:
    """Append-only record of verified files under ``RAW/.openmind-prep/verified.jsonl``.

    A recorded file whose size and mtime are unchanged is trusted without re-hashing, so bytes
    changed in place with size and mtime kept go unnoticed; ``rehash=True`` (``download
    --verify-all``) re-hashes every file instead.
    """

    def __init__(self, raw: Path, *, rehash: bool = False) -> None:
        self.path = Path(raw) / STATE_DIR / "verified.jsonl"
        self.rehash = rehash
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: ignore it
                    continue
                self._entries[entry["path"]] = entry

    def record(self, local: Path, remote: RemoteFile, digests: tuple[str, str]) -> None:
        st = local.stat()
        entry = {"path": remote.path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "sha256": digests[0], "git_sha1": digests[1]}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            self._entries[remote.path] = entry

    def is_verified(self, local: Path, remote: RemoteFile) -> bool:
        """Whether ``local`` holds ``remote``: trusted from the record if size and mtime are
        unchanged, else re-hashed (and recorded when it matches)."""
        try:
            st = local.stat()
        except FileNotFoundError:
            return False
        if st.st_size != remote.size:
            return False
        entry = self._entries.get(remote.path)
        if entry and not self.rehash and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return _matches(remote, (entry["sha256"], entry["git_sha1"]))
        digests = file_digests(local)
        if _matches(remote, digests):
            self.record(local, remote, digests)
            return True
        return False


def _stream_once(repo: HubRepo, url: str, remote: RemoteFile, part: Path,
                 on_bytes: Callable[[int], None] | None) -> None:
    """One GET bringing ``part`` towards ``remote.size`` bytes, resuming from its size with a
    ``Range``; a server that ignores the range (200) restarts the part. Timeouts and the deadline
    apply; a short body raises :class:`ShortTransfer` (resumed by the retry)."""
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    if have == remote.size:
        return
    headers = build_hf_headers(token=repo.token)
    headers["Accept-Encoding"] = "identity"  # byte ranges of the stored object, not of a gzip stream
    if have:
        headers["Range"] = f"bytes={have}-"
    with repo.session().stream("GET", url, headers=headers, timeout=repo.timeout(),
                               follow_redirects=True) as response:
        hf_raise_for_status(response)
        if have and response.status_code != 206:  # the whole body: appending it would double the start
            have = 0
        total = _total_size(response)
        if total is not None and total != remote.size:  # no retry mends it: the list and the repo disagree
            raise DownloadError(remote.path, f"the server's file is {total} bytes, the file list says "
                                             f"{remote.size}; re-resolve the pinned list against the repo")
        rate = _RateWatch(repo.min_rate_b_s, repo.read_timeout_s)
        with part.open("ab" if have else "wb") as f:
            for chunk in response.iter_bytes():  # as the bytes come: a slow drip is seen, not buffered
                if have + len(chunk) > remote.size:
                    f.close()
                    part.unlink()
                    raise DownloadError(remote.path, f"the server sent more than the expected {remote.size} bytes")
                f.write(chunk)
                have += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
                repo.policy.check_deadline(remote.path)  # the part is kept: a later run resumes it
                rate.check(len(chunk), remote.path)
    if have < remote.size:
        raise ShortTransfer(f"the body ended at {have} of {remote.size} bytes")


def _total_size(response) -> int | None:
    """The whole file's size as the answer states it (``Content-Range`` of a 206, else ``Content-Length``).

    >>> class R: status_code, headers = 206, {"Content-Range": "bytes 5-9/10"}
    >>> _total_size(R())
    10
    """
    text = response.headers.get("Content-Range", "") if response.status_code == 206 else \
        response.headers.get("Content-Length", "")
    text = text.rpartition("/")[2].strip()
    return int(text) if text.isdigit() else None


class _RateWatch:
    """Counts a transfer's bytes per window of ``window_s``; a window below ``min_rate_b_s`` is a
    :class:`Stalled` (checked as bytes come: a transfer that stops altogether meets the read timeout)."""

    def __init__(self, min_rate_b_s: float, window_s: float) -> None:
        import time

        self.clock = time.monotonic
        self.min_rate, self.window = min_rate_b_s, window_s
        self.start, self.bytes = self.clock(), 0

    def check(self, n: int, path: str) -> None:
        self.bytes += n
        elapsed = self.clock() - self.start
        if elapsed < self.window:
            return
        rate = self.bytes / elapsed
        if rate < self.min_rate:
            raise Stalled(path, f"stalled: {rate:.3g} B/s over {elapsed:.3g} s, below the minimum "
                                f"{self.min_rate:g} B/s (the part is kept; a retry resumes it)")
        self.start, self.bytes = self.clock(), 0


def _transfer(repo: HubRepo, commit: str, remote: RemoteFile, part: Path,
              on_bytes: Callable[[int], None] | None) -> None:
    """Bring ``part`` to ``remote.size`` bytes, resuming and retrying under ``repo.policy``."""
    url = repo.url(commit, remote.path)
    retrying(lambda: _stream_once(repo, url, remote, part, on_bytes), remote.path, repo.policy,
             resource="resolvers")


def fetch_verified(repo: HubRepo, commit: str, remote: RemoteFile, dest: Path, raw: Path,
                   state: VerifiedState, on_bytes: Callable[[int], None] | None = None) -> bool:
    """Download ``remote`` to ``dest`` via a resumable ``.part`` file and verify it; returns True
    if bytes were transferred, False if ``dest`` was already verified.

    A size/sha256 mismatch deletes the part and fetches once more from scratch; a second
    mismatch raises :class:`DownloadError` naming the file (nothing is left at ``dest``).
    """
    dest = Path(dest)
    if state.is_verified(dest, remote):
        return False
    key = hashlib.sha1(remote.path.encode()).hexdigest()[:24]
    part = Path(raw) / STATE_DIR / "partial" / f"{key}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    expected = remote.sha256 or f"git blob {remote.blob_id}"
    for attempt in (1, 2):
        _transfer(repo, commit, remote, part, on_bytes)
        digests = file_digests(part)
        if part.stat().st_size == remote.size and _matches(remote, digests):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            state.record(dest, remote, digests)
            return True
        got = digests[0] if remote.sha256 else f"git blob {digests[1]}"
        part.unlink(missing_ok=True)
    raise DownloadError(remote.path, f"checksum mismatch twice (expected {expected}, got {got}); "
                                     "the file was not kept")
