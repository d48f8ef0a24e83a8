"""The tests' hub: the package's local hub (``openmind_prep.sources.local_hub.LocalHub``, the
endpoints ``huggingface_hub`` calls, served from a folder) with a fixed commit, small tree pages and
fault injection.

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

import random
import time
from dataclasses import dataclass, field

from openmind_prep.sources.local_hub import Hit, HubHandler, LocalHub

COMMIT = "0123456789abcdef0123456789abcdef01234567"

__all__ = ["COMMIT", "Faults", "Hit", "HubFixture"]


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


class _FaultyHandler(HubHandler):
    hub: "HubFixture"

    def intercept(self, kind: str, rest: str, log_path: str, head: bool) -> bool:
        faults = self.hub.faults
        if self.hub._take(faults.hang, kind):  # accept, read the request, never answer
            self.hub._record(Hit(time.monotonic(), self.command, log_path, kind, 0, self.headers.get("Range")))
            self.hub.closing.wait()
            self.close_connection = True
            return True
        if self._injected(kind, log_path, head):
            return True
        if self.hub._take(faults.html, kind):  # a captive portal or a web server, not the hub's API
            self._send(200, b"<!doctype html><html><body>Welcome</body></html>",
                       {"Content-Type": "text/html"}, kind=kind, path=log_path, head=head)
            return True
        if kind == "resolve" and rest in faults.redirect:
            self._send(302, b"", {"Location": faults.redirect[rest]}, kind=kind, path=log_path, head=head)
            return True
        return False

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

    def extra_headers(self, status: int, kind: str) -> dict:
        if status < 400 and self.hub._take(self.hub.faults.used_up, kind):
            return {"RateLimit": f'"api";r=0;t={self.hub.faults.used_up_reset}',
                    "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}
        return {}

    def payload(self, blob, head: bool) -> bytes:
        data = blob.data
        if not head and self.hub._take(self.hub.faults.corrupt, blob.path):
            i = len(data) // 3
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        return data

    def honours_range(self) -> bool:
        return not self.hub.faults.ignore_range

    def send_payload(self, status: int, data: bytes, headers: dict, *, kind: str, path: str, head: bool) -> None:
        if not head and self.hub._take(self.hub.faults.drip, path):
            return self._drip(status, data, headers, kind=kind, path=path)
        if not head and self.hub._take(self.hub.faults.cut, path):
            self.close_connection = True
            self._send(status, data[: len(data) // 2], headers, kind=kind, path=path)
            self.wfile.flush()
            return
        self._send(status, data, headers, kind=kind, path=path, head=head)

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


class HubFixture(LocalHub):
    """``LocalHub`` serving ``COMMIT``, plain git files below ``lfs_threshold`` (default: none), tree
    pages of 3 entries, and the faults set on ``self.faults``."""

    handler = _FaultyHandler

    def __init__(self, root, repo_id: str = "AnonRes/OpenMind", *, lfs_threshold: int = 0,
                 page_size: int = 3, **kwargs) -> None:
        self.faults = Faults()
        super().__init__(root, repo_id, lfs_threshold=lfs_threshold, page_size=page_size, commit=COMMIT, **kwargs)

    def _take(self, counters: dict[str, int], path: str) -> bool:
        """Consume one fault for ``path`` if any is left (-1 means forever)."""
        with self._lock:
            left = counters.get(path, 0)
            if left == 0:
                return False
            if left > 0:
                counters[path] = left - 1
            return True
