"""A local Hugging-Face-compatible hub on 127.0.0.1: a folder laid out as the Hub repo (the embedded
sample from ``openmind-prep sample DEST``, a local copy) served to the real client, so ``--repo
FOLDER`` (or ``file://FOLDER``) runs download, plan and run without network, with the same pinning,
sizes and sha256 checks as against the Hub. ``tests/hf_server.py`` adds injected faults on top.

It answers exactly the endpoints that ``huggingface_hub`` calls for our downloads:

- ``GET  /api/datasets/{repo}[/revision/{rev}]``       repo info (``sha`` = the commit)
- ``POST /api/datasets/{repo}/paths-info/{rev}``        form field ``paths`` (repeated)
- ``GET  /api/datasets/{repo}/tree/{rev}[/{path}]``     listing, paginated with a ``Link`` header
- ``HEAD|GET /datasets/{repo}/resolve/{rev}/{path}``    ``ETag``, ``X-Repo-Commit``; LFS files carry
  ``X-Linked-Size`` / ``X-Linked-Etag`` and redirect (302) to ``/cdn/{sha256}`` on a second port
  (another origin, like the hub's CDN)
- ``GET  /cdn/{sha256}``                                the LFS object, with ``Range`` (206)

Every request is logged in ``hub.log`` as a :class:`Hit`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    time: float
    method: str
    path: str  # repo file path for resolve/cdn requests, else the URL path
    kind: str  # "info" | "paths-info" | "tree" | "resolve" | "cdn"
    status: int
    range: str | None


@dataclass(frozen=True)
class _Blob:
    """One file of the served folder: hashed once when the hub starts, read from disk when served."""

    path: str
    file: Path
    size: int
    sha256: str
    lfs: bool

    @classmethod
    def of(cls, rel: str, file: Path, lfs_threshold: int) -> "_Blob":
        digest = hashlib.sha256()
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        size = file.stat().st_size
        return cls(rel, file, size, digest.hexdigest(), lfs=size >= lfs_threshold)

    @property
    def data(self) -> bytes:
        return self.file.read_bytes()

    @property
    def git_oid(self) -> str:
        content = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {self.size}\n").encode()

    def info(self) -> dict:
        entry = {"type": "file", "path": self.path, "size": self.size, "oid": self.git_oid}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


class LocalHub:
    """Serve ``root`` as dataset ``repo_id`` (``repo_type="model"``: a model repo) on 127.0.0.1 (random
    ports) until :meth:`close`; also a context manager.

    Files smaller than ``lfs_threshold`` bytes are plain git files (no LFS sha256); others are LFS.
    ``commit`` (default: a digest of every file's path and content) is the one revision served, with
    ``main``. ``on_request`` is called (in the server thread) at the start of every request.

    >>> import tempfile
    >>> from huggingface_hub import HfApi
    >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "a.txt").write_text("hello")
    >>> with LocalHub(folder, "local/x") as hub:
    ...     info = HfApi(endpoint=hub.endpoint).dataset_info("local/x")
    >>> info.sha == hub.commit
    True
    """

    handler: type["HubHandler"]  # set below; a subclass may serve with its own handler

    def __init__(self, root: Path, repo_id: str = "AnonRes/OpenMind", *, lfs_threshold: int = 1000,
                 page_size: int = 1000, on_request: Callable[[], None] | None = None,
                 repo_type: str = "dataset", commit: str | None = None) -> None:
        self.repo_id, self.repo_type = repo_id, repo_type
        self.page_size = page_size
        self.on_request = on_request
        self.closing = threading.Event()  # releases requests held open
        self.log: list[Hit] = []
        self._lock = threading.Lock()
        self.blobs: dict[str, _Blob] = {}
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                self.blobs[rel] = _Blob.of(rel, p, lfs_threshold)
        self.commit = commit or hashlib.sha1("".join(
            f"{b.path}\0{b.sha256}\0" for b in self.blobs.values()).encode()).hexdigest()
        self.by_sha = {b.sha256: b for b in self.blobs.values() if b.lfs}
        # Two origins, like the hub and its CDN: huggingface_hub treats a redirect to another
        # origin differently (HEAD stops there, the Authorization header is dropped).
        handler = type("Handler", (self.handler,), {"hub": self})
        self._servers = [_Server(("127.0.0.1", 0), handler) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """The hub's base URL (what ``HF_ENDPOINT`` or ``--endpoint`` is set to)."""
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn(self) -> str:
        host, port = self._servers[1].server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LocalHub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.closing.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def hits(self, kind: str | None = None, status: int | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.log if (kind is None or h.kind == kind)
                    and (status is None or h.status == status)]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.log.append(hit)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer (a refused size, a stall) is expected here, not a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class HubHandler(BaseHTTPRequestHandler):
    """The hub's answers. Hooks for a subclass (the tests' faults): :meth:`intercept` may answer a
    request instead, :meth:`extra_headers` adds headers, :meth:`payload` gives a file's bytes,
    :meth:`honours_range` and :meth:`send_payload` shape the transfer."""

    protocol_version = "HTTP/1.1"
    hub: LocalHub

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # -- hooks ------------------------------------------------------------------------------
    def intercept(self, kind: str, rest: str, log_path: str, head: bool) -> bool:
        """Answer the request some other way; True when it was answered."""
        return False

    def extra_headers(self, status: int, kind: str) -> dict:
        return {}

    def payload(self, blob: _Blob, head: bool) -> bytes:
        return blob.data

    def honours_range(self) -> bool:
        return True

    def send_payload(self, status: int, data: bytes, headers: dict, *, kind: str, path: str, head: bool) -> None:
        self._send(status, data, headers, kind=kind, path=path, head=head)

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, kind: str,
              path: str, head: bool = False) -> None:
        self.send_response(status)
        headers = {**(headers or {}), **self.extra_headers(status, kind)}
        for k, v in headers.items():
            self.send_header(k, str(v))
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.hub._record(Hit(time.monotonic(), self.command, path, kind, status, self.headers.get("Range")))

    def _json(self, obj, *, kind: str, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(200, body, {"Content-Type": "application/json", **(headers or {})},
                   kind=kind, path=urlsplit(self.path).path)

    def _error(self, status: int, code: str, *, kind: str, path: str, head: bool = False) -> None:
        self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code},
                   kind=kind, path=path, head=head)

    def _route(self) -> tuple[str, str, str, str]:
        """(kind, repo, revision, rest) from the URL; kind '' when unknown."""
        url_path = unquote(urlsplit(self.path).path)
        if url_path.startswith("/cdn/"):
            return "cdn", "", "", url_path[len("/cdn/"):]
        repo = self.hub.repo_id
        api = f"/api/datasets/{repo}" if self.hub.repo_type == "dataset" else f"/api/models/{repo}"
        files = f"/datasets/{repo}" if self.hub.repo_type == "dataset" else f"/{repo}"
        for kind, prefix in (("paths-info", f"{api}/paths-info/"),
                             ("tree", f"{api}/tree/"),
                             ("info", f"{api}/revision/"),
                             ("resolve", f"{files}/resolve/")):
            if url_path.startswith(prefix):
                rev, _, rest = url_path[len(prefix):].partition("/")
                return kind, repo, rev, rest
        if url_path == api:
            return "info", repo, "main", ""
        return "", "", "", url_path

    # -- verbs ------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        if self.hub.on_request is not None:
            self.hub.on_request()
        kind, _, rev, rest = self._route()
        log_path = urlsplit(self.path).path
        if kind == "resolve":
            log_path = rest
        elif kind == "cdn":
            log_path = self.hub.by_sha[rest].path if rest in self.hub.by_sha else rest
        body = b""
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not kind:
            return self._error(404, "RepoNotFound", kind="unknown", path=log_path, head=head)
        if self.intercept(kind, rest, log_path, head):
            return
        if kind != "cdn" and rev not in ("main", self.hub.commit):
            return self._error(404, "RevisionNotFound", kind=kind, path=log_path, head=head)
        if kind == "info":
            return self._json({"id": self.hub.repo_id, "sha": self.hub.commit, "private": False}, kind=kind)
        if kind == "paths-info":
            paths = parse_qs(body.decode()).get("paths", [])
            return self._json(self._paths_info(paths), kind=kind)
        if kind == "tree":
            return self._tree(rest)
        if kind == "resolve":
            return self._resolve(rest, head)
        return self._cdn(rest, head)

    def _paths_info(self, paths: list[str]) -> list[dict]:
        out = []
        folders = {str(Path(p).parent.as_posix()) for p in self.hub.blobs}
        for p in paths:
            if p in self.hub.blobs:
                out.append(self.hub.blobs[p].info())
            elif any(f == p or f.startswith(p + "/") for f in folders):
                out.append({"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest()})
        return out  # unknown paths are left out, as the hub does

    def _tree(self, folder: str) -> None:
        query = parse_qs(urlsplit(self.path).query)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for p, blob in self.hub.blobs.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            if recursive:
                for i in range(1, len(rest)):
                    d = prefix + "/".join(rest[:i])
                    entries[d] = {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                entries[p] = blob.info()
            elif len(rest) == 1:
                entries[p] = blob.info()
            else:
                d = prefix + rest[0]
                entries[d] = {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
        ordered = [entries[k] for k in sorted(entries)]
        start = int(query.get("cursor", ["0"])[0])
        page = ordered[start:start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(ordered):
            nxt = (f"{self.hub.endpoint}{urlsplit(self.path).path}?recursive={str(recursive).lower()}"
                   f"&cursor={start + self.hub.page_size}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, kind="tree", headers=headers)

    def _resolve(self, path: str, head: bool) -> None:
        blob = self.hub.blobs.get(path)
        if blob is None:
            return self._error(404, "EntryNotFound", kind="resolve", path=path, head=head)
        headers = {"X-Repo-Commit": self.hub.commit, "ETag": f'"{blob.git_oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Size": blob.size, "X-Linked-Etag": f'"{blob.sha256}"',
                            "Location": f"{self.hub.cdn}/cdn/{blob.sha256}"})
            return self._send(302, b"", headers, kind="resolve", path=path, head=head)
        self._serve_bytes(blob, headers, head, kind="resolve")

    def _cdn(self, sha: str, head: bool) -> None:
        blob = self.hub.by_sha.get(sha)
        if blob is None:
            return self._error(404, "EntryNotFound", kind="cdn", path=sha, head=head)
        self._serve_bytes(blob, {"ETag": f'"{blob.sha256}"', "Accept-Ranges": "bytes"}, head, kind="cdn")

    def _serve_bytes(self, blob: _Blob, headers: dict, head: bool, *, kind: str) -> None:
        data = self.payload(blob, head)
        status, start = 200, 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.honours_range():
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first)
            end = int(last) if last else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, kind=kind,
                                  path=blob.path, head=head)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Length"] = len(data)
        self.send_payload(status, data, headers, kind=kind, path=blob.path, head=head)


LocalHub.handler = HubHandler


def local_folder(repo: str) -> Path | None:
    """The folder a ``--repo`` value names (``file://PATH`` or an existing folder), or None for a
    hub repo id. A value that looks like a path but is no folder is refused by name.

    >>> local_folder("AnonRes/OpenMind") is None
    True
    >>> local_folder("file:///tmp") == Path("/tmp")
    True
    >>> local_folder("./no-such-folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: --repo ./no-such-folder: no such folder
    """
    if repo.startswith("file://"):
        path = Path(unquote(urlsplit(repo).path))
    elif Path(repo).expanduser().is_dir() or repo.startswith((".", "/", "~")):
        path = Path(repo).expanduser()
    else:
        return None
    if not path.is_dir():
        raise FileNotFoundError(f"--repo {repo}: no such folder")
    return path


@contextlib.contextmanager
def served(repo: str, endpoint: str | None) -> Iterator[tuple[str, str | None]]:
    """``(repo_id, endpoint)`` to use for ``repo``: a hub repo as given, or a local folder served on
    127.0.0.1 (as ``local/<folder name>``) while the block runs."""
    folder = local_folder(repo)
    if folder is None:
        yield repo, endpoint
        return
    root = folder.resolve()
    with LocalHub(root, f"local/{root.name or 'root'}") as hub:
        yield hub.repo_id, hub.endpoint
