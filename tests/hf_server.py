"""A local Hugging-Face-compatible HTTP server for tests, with fault injection.

It serves one dataset repo built from a folder on disk (normally the real-MRI sample tree of
``openmind_prep.sources.embedded.build_sample_tree``) and answers exactly the endpoints that
``huggingface_hub`` calls for our downloads:

- ``GET  /api/datasets/{repo}[/revision/{rev}]``       repo info (``sha`` = the commit)
- ``POST /api/datasets/{repo}/paths-info/{rev}``        form field ``paths`` (repeated)
- ``GET  /api/datasets/{repo}/tree/{rev}[/{path}]``     listing, paginated with a ``Link`` header
- ``HEAD|GET /datasets/{repo}/resolve/{rev}/{path}``    ``ETag``, ``X-Repo-Commit``; LFS files carry
  ``X-Linked-Size`` / ``X-Linked-Etag`` and redirect (302) to ``/cdn/{sha256}`` on a second port
  (another origin, like the hub's CDN)
- ``GET  /cdn/{sha256}``                                the LFS object, with ``Range`` (206)

Faults (set on ``server.faults`` between runs): ``rate_limit`` (the next N requests get 429 with
``Retry-After: retry_after``, or with the Hub's IETF-draft ``RateLimit: "api";r=0;t=N`` and
``RateLimit-Policy`` headers and no ``Retry-After`` when ``ratelimit_reset`` is set), ``hang``
(request kind → how many requests are accepted and never answered; -1 = always; released when the
server closes), ``used_up`` (request kind → how many successful answers say, in ``RateLimit``, that
no ``api`` request is left for ``used_up_reset`` s), ``error_rate`` (random 500s, seeded), ``cut`` (path → how many GETs send half the
body then close), ``corrupt`` (path → how many GETs flip one byte at the right length; -1 = always),
``ignore_range`` (answer 200 with the whole body to a ``Range`` request), ``drip`` (path → how many GETs
send one byte per ``drip_s`` s; -1 = always), ``html`` (request kind → how many answers are an HTML
page with status 200), ``redirect`` (path → a ``Location`` its resolve request is redirected to, e.g.
``file:///etc/passwd``).
Every request is logged in ``server.log`` as a :class:`Hit`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    time: float
    method: str
    path: str  # repo file path for resolve/cdn requests, else the URL path
    kind: str  # "info" | "paths-info" | "tree" | "resolve" | "cdn"
    status: int
    range: str | None


@dataclass
class Faults:
    """Faults to inject; counters decrease as faults fire."""

    rate_limit: int = 0
    retry_after: int = 0
    error_rate: float = 0.0
    seed: int = 0
    cut: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False  # answer 200 with the whole body, like a CDN that drops Range
    ratelimit_reset: int | None = None  # 429s carry RateLimit headers (reset in N s) instead of Retry-After
    hang: dict[str, int] = field(default_factory=dict)  # kind -> requests never answered (-1: all)
    used_up: dict[str, int] = field(default_factory=dict)  # kind -> 200s saying "api";r=0;t=used_up_reset
    used_up_reset: int = 1
    drip: dict[str, int] = field(default_factory=dict)  # path -> GETs sending one byte per drip_s
    drip_s: float = 0.5
    html: dict[str, int] = field(default_factory=dict)  # kind -> answers that are an HTML page, status 200
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location of its resolve answer (302)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass(frozen=True)
class _Blob:
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        content = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    def info(self) -> dict:
        entry = {"type": "file", "path": self.path, "size": len(self.data), "oid": self.git_oid}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


class HubFixture:
    """Serve ``root`` as dataset ``repo_id`` (``repo_type="model"``: a model repo) on 127.0.0.1 (random port)
    until :meth:`close`.

    Files smaller than ``lfs_threshold`` bytes are plain git files (no LFS sha256); others are LFS.
    ``on_request`` is called (in the server thread) at the start of every request.
    """

    def __init__(self, root: Path, repo_id: str = "AnonRes/OpenMind", *, lfs_threshold: int = 0,
                 page_size: int = 3, on_request: Callable[[], None] | None = None,
                 repo_type: str = "dataset") -> None:
        self.repo_id, self.repo_type = repo_id, repo_type
        self.page_size = page_size
        self.on_request = on_request
        self.faults = Faults()
        self.closing = threading.Event()  # releases hung requests
        self.log: list[Hit] = []
        self._lock = threading.Lock()
        self.blobs: dict[str, _Blob] = {}
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                data = p.read_bytes()
                self.blobs[rel] = _Blob(rel, data, lfs=len(data) >= lfs_threshold)
        self.by_sha = {b.sha256: b for b in self.blobs.values() if b.lfs}
        # Two origins, like the hub and its CDN: huggingface_hub treats a redirect to another
        # origin differently (HEAD stops there, the Authorization header is dropped).
        self._servers = [_Server(("127.0.0.1", 0), self._handler_class()) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """The hub's base URL (what ``HF_ENDPOINT`` is set to)."""
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn(self) -> str:
        host, port = self._servers[1].server_address[:2]
        return f"http://{host}:{port}"

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

    def _take(self, counters: dict[str, int], path: str) -> bool:
        """Consume one fault for ``path`` if any is left (-1 means forever)."""
        with self._lock:
            left = counters.get(path, 0)
            if left == 0:
                return False
            if left > 0:
                counters[path] = left - 1
            return True

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fixture = self

        class Handler(_Handler):
            hub = fixture

        return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer (a refused size, a stall) is expected here, not a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubFixture

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, kind: str,
              path: str, head: bool = False) -> None:
        self.send_response(status)
        if status < 400 and self.hub._take(self.hub.faults.used_up, kind):
            headers = {**(headers or {}), "RateLimit": f'"api";r=0;t={self.hub.faults.used_up_reset}',
                       "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.hub._record(Hit(time.monotonic(), self.command, path, kind, status,
                             self.headers.get("Range")))

    def _json(self, obj, *, kind: str, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(200, body, {"Content-Type": "application/json", **(headers or {})},
                   kind=kind, path=urlsplit(self.path).path)

    def _error(self, status: int, code: str, *, kind: str, path: str, head: bool = False) -> None:
        self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code},
                   kind=kind, path=path, head=head)

    def _injected(self, kind: str, path: str, head: bool) -> bool:
        """Send an injected 429/500 instead of the answer; True if one was sent."""
        faults = self.hub.faults
        with self.hub._lock:
            limited = faults.rate_limit > 0
            if limited:
                faults.rate_limit -= 1
            failed = not limited and faults.error_rate > 0 and faults.rng.random() < faults.error_rate
        if limited and faults.ratelimit_reset is not None:
            self._send(429, b"rate limited", {"RateLimit": f'"api";r=0;t={faults.ratelimit_reset}',
                                              "RateLimit-Policy": '"fixed window";"api";q=500;w=300'},
                       kind=kind, path=path, head=head)
        elif limited:
            self._send(429, b"rate limited", {"Retry-After": faults.retry_after}, kind=kind,
                       path=path, head=head)
        elif failed:
            self._send(500, b"injected failure", kind=kind, path=path, head=head)
        return limited or failed

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

    def _known_revision(self, rev: str) -> bool:
        return rev in ("main", COMMIT)

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
        if self.hub._take(self.hub.faults.hang, kind):  # accept, read the request, never answer
            self.hub._record(Hit(time.monotonic(), self.command, log_path, kind, 0, self.headers.get("Range")))
            self.hub.closing.wait()
            self.close_connection = True
            return
        if self._injected(kind, log_path, head):
            return
        if self.hub._take(self.hub.faults.html, kind):  # a captive portal or a web server, not the hub's API
            return self._send(200, b"<!doctype html><html><body>Welcome</body></html>",
                              {"Content-Type": "text/html"}, kind=kind, path=log_path, head=head)
        if kind == "resolve" and rest in self.hub.faults.redirect:
            return self._send(302, b"", {"Location": self.hub.faults.redirect[rest]}, kind=kind, path=log_path,
                              head=head)
        if kind != "cdn" and not self._known_revision(rev):
            return self._error(404, "RevisionNotFound", kind=kind, path=log_path, head=head)
        if kind == "info":
            return self._json({"id": self.hub.repo_id, "sha": COMMIT, "private": False}, kind=kind)
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
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{blob.git_oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Size": len(blob.data), "X-Linked-Etag": f'"{blob.sha256}"',
                            "Location": f"{self.hub.cdn}/cdn/{blob.sha256}"})
            return self._send(302, b"", headers, kind="resolve", path=path, head=head)
        self._serve_bytes(blob, headers, head, kind="resolve")

    def _drip(self, status: int, data: bytes, headers: dict, *, kind: str, path: str) -> None:
        """Send the headers, then one byte per ``drip_s`` until the body is sent, the client leaves or
        the server closes."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        self.hub._record(Hit(time.monotonic(), self.command, path, kind, status, self.headers.get("Range")))
        self.close_connection = True
        try:
            for i in range(len(data)):
                if self.hub.closing.wait(self.hub.faults.drip_s):
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
        except OSError:  # the client gave up
            return

    def _cdn(self, sha: str, head: bool) -> None:
        blob = self.hub.by_sha.get(sha)
        if blob is None:
            return self._error(404, "EntryNotFound", kind="cdn", path=sha, head=head)
        self._serve_bytes(blob, {"ETag": f'"{blob.sha256}"', "Accept-Ranges": "bytes"}, head, kind="cdn")

    def _serve_bytes(self, blob: _Blob, headers: dict, head: bool, *, kind: str) -> None:
        data = blob.data
        if not head and self.hub._take(self.hub.faults.corrupt, blob.path):
            i = len(data) // 3
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        status, start = 200, 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not self.hub.faults.ignore_range:
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first)
            end = int(last) if last else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, kind=kind,
                                  path=blob.path, head=head)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Length"] = len(data)
        if not head and self.hub._take(self.hub.faults.drip, blob.path):
            return self._drip(status, data, headers, kind=kind, path=blob.path)
        if not head and self.hub._take(self.hub.faults.cut, blob.path):
            self.close_connection = True
            self._send(status, data[: len(data) // 2], headers, kind=kind, path=blob.path)
            self.wfile.flush()
            return
        self._send(status, data, headers, kind=kind, path=blob.path, head=head)

