"""Retrying hub requests: which errors are worth another try, how long to wait, and when to stop.

The wait before retry ``n`` is, in this order of preference: what the server asked for — the
Hub's IETF-draft ``RateLimit`` header (``"api";r=0;t=55``: none left, the window resets in 55 s,
parsed by ``huggingface_hub``'s own :func:`parse_ratelimit_headers`) or ``Retry-After`` (seconds
or an HTTP date), the longer of the two — else exponential backoff. Every retry is announced on
stderr as ``<what>: retry 3/8 in 4 s: <reason>``, so a dead endpoint is never a silent wait, and a
:class:`RetryPolicy` ``deadline`` (wall-clock, so it means the same on every Dask worker) stops
all retries and new transfers once it has passed.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable

#: Answers worth a retry: timeout, rate limit, server errors.
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class DownloadError(RuntimeError):
    """A file could not be downloaded and verified; ``path`` names it (repo-relative)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class ShortTransfer(OSError):
    """The server ended a body before the expected size (worth resuming)."""


class Stalled(DownloadError):
    """A transfer ran below the minimum rate for a whole window (a slow drip); its ``.part`` is kept.
    Not retried in place: :func:`openmind_prep.sources.download.fetch_batch` retries it after the other
    files of its batch, so one dripping file does not hold them back."""


#: The longest wait a server may ask for (``Retry-After``, a ``RateLimit`` reset) that is slept; a longer
#: one ends the request at once with one line (the Hub's windows are 5 minutes).
MAX_SERVER_WAIT_S = 900.0
#: Before anything has answered in this process (a first request), connection failures and timeouts are
#: retried for at most this long: a wrong or dead endpoint is one line in seconds, not minutes.
UNREACHED_BUDGET_S = 25.0
#: Set by :func:`heard` on every answer (any status) the hub's HTTP client gets in this process.
ANSWERED = threading.Event()


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``retries`` retries after the first try; backoff ``base_s * 2**(n-1)`` capped at
    ``max_s``; the server's own wait wins. ``deadline``: a ``time.time()`` after which nothing new
    starts and no retry is scheduled (None: no deadline).

    >>> [RetryPolicy(base_s=1, max_s=5).delay(n) for n in (1, 2, 3, 4)]
    [1, 2, 4, 5]
    >>> RetryPolicy().delay(1, server_wait=30.0)
    30.0
    """

    retries: int = 8
    base_s: float = 1.0
    max_s: float = 120.0
    deadline: float | None = None

    def delay(self, retry: int, server_wait: float | None = None) -> float:
        if server_wait is not None:
            return max(0.0, server_wait)
        return min(self.max_s, self.base_s * 2 ** (retry - 1))

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (negative once passed); None without one."""
        return None if self.deadline is None else self.deadline - time.time()

    def check_deadline(self, what: str) -> None:
        """Raise :class:`DownloadError` naming ``what`` if the deadline has passed.

        >>> RetryPolicy(deadline=0.0).check_deadline("a.nii.gz")
        Traceback (most recent call last):
        openmind_prep.sources.retry.DownloadError: a.nii.gz: not finished: the --deadline has passed
        """
        left = self.seconds_left()
        if left is not None and left <= 0:
            raise DownloadError(what, "not finished: the --deadline has passed")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``.

    >>> parse_duration("90"), parse_duration("30m"), parse_duration("1.5h")
    (90.0, 1800.0, 5400.0)
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = str(text).strip().lower()
    scale = units.get(text[-1:], None)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90, 90s, 30m, 2h)") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r}: a duration must be positive and finite")
    return value


def _response(error: BaseException):
    return getattr(error, "response", None)


def status_of(error: BaseException) -> int | None:
    """The HTTP status carried by ``error`` (an ``HfHubHTTPError`` / ``httpx2.HTTPStatusError``)."""
    return getattr(_response(error), "status_code", None)


def server_wait(headers) -> float | None:
    """Seconds the server asked us to wait: the ``RateLimit`` reset when no request is left in the
    window, or ``Retry-After`` (seconds or an HTTP date), the longer of the two; None if neither.

    >>> server_wait({"RateLimit": '"api";r=0;t=55', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'})
    55.0
    >>> server_wait({"RateLimit": '"api";r=12;t=55'}) is None   # requests left: no reason to wait
    True
    >>> server_wait({"Retry-After": "3", "RateLimit": '"api";r=0;t=2'})
    3.0
    """
    from huggingface_hub.utils import parse_ratelimit_headers

    if headers is None:
        return None
    waits = []
    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        waits.append(float(info.reset_in_seconds))
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is not None:
        value = str(value).strip()
        try:
            seconds = float(value)
            waits.append(max(0.0, seconds) if math.isfinite(seconds) else math.inf)
        except ValueError:
            try:
                waits.append(max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
            except OverflowError:  # a date far in the future
                waits.append(math.inf)
            except (TypeError, ValueError, IndexError):
                pass  # unparseable: fall back to backoff
    return max(waits) if waits else None


class RateWindows:
    """What the Hub said about its rate limits, process-wide: a resource (``api``, ``resolvers``)
    whose ``RateLimit`` header showed no request left is paused until its window resets, so the next
    request waits instead of earning a 429. :meth:`observe` is an ``httpx2`` response hook.

    >>> windows = RateWindows()
    >>> windows.observe_headers({"RateLimit": '"api";r=0;t=30'})
    >>> 29 < windows.wait_s("api") <= 30, windows.wait_s("resolvers")
    (True, 0.0)
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe_headers(self, headers) -> None:
        from huggingface_hub.utils import parse_ratelimit_headers

        info = parse_ratelimit_headers(headers)
        if info is not None and info.remaining == 0:
            with self._lock:
                until = time.time() + info.reset_in_seconds
                self._until[info.resource_type] = max(self._until.get(info.resource_type, 0.0), until)

    def observe(self, response) -> None:
        self.observe_headers(response.headers)

    def wait_s(self, resource: str) -> float:
        with self._lock:
            return max(0.0, self._until.get(resource, 0.0) - time.time())


#: The process's view of the Hub's rate-limit windows (fed by :meth:`HubRepo.session`'s client).
RATE_WINDOWS = RateWindows()


def heard(response) -> None:
    """The ``httpx2`` response hook of the hub's client: note that something answered (:data:`ANSWERED`)
    and what its ``RateLimit`` header says (:data:`RATE_WINDOWS`)."""
    ANSWERED.set()
    RATE_WINDOWS.observe(response)


def _unreachable(error: BaseException) -> bool:
    """A failure that means nothing answered: no connection, or no answer in time."""
    import httpx2

    return isinstance(error, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout, ConnectionError,
                              TimeoutError)) and not isinstance(error, ConnectionResetError)


def _origin(error: BaseException) -> str:
    """The scheme://host:port of the request that failed, or the configured endpoint."""
    import os

    try:
        url = error.request.url  # httpx2 errors carry their request
        return f"{url.scheme}://{url.netloc.decode()}"
    except (AttributeError, RuntimeError):
        return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def unreached(what: str, error: BaseException) -> DownloadError:
    """The one line for an endpoint that never answered: which one, why, and where it was configured."""
    import os

    configured = os.environ.get("HF_ENDPOINT")
    where = f"HF_ENDPOINT={configured}" if configured else "HF_ENDPOINT is not set"
    return DownloadError(what, f"cannot reach the hub at {_origin(error)} ({reason(error)}); check --endpoint "
                               f"/ HF_ENDPOINT ({where}) and the network")


def is_transient(error: BaseException) -> bool:
    """429/5xx answers, refused or dropped connections, timeouts and short bodies are worth a retry.

    >>> is_transient(ConnectionRefusedError()), is_transient(ShortTransfer("cut")), is_transient(KeyError())
    (True, True, False)
    """
    import httpx2

    if isinstance(error, httpx2.UnsupportedProtocol):  # e.g. a redirect to file:///...: no retry mends it
        return False
    if isinstance(error, (httpx2.TransportError, TimeoutError, ConnectionError, ShortTransfer)):
        return True
    return status_of(error) in RETRY_STATUS


def reason(error: BaseException) -> str:
    """One short line saying what went wrong.

    >>> reason(ConnectionRefusedError(111, "Connection refused"))
    'ConnectionRefusedError: [Errno 111] Connection refused'
    """
    import httpx2

    status = status_of(error)
    if status is not None:
        wait = server_wait(getattr(_response(error), "headers", None))
        asked = f" (the server asks to wait {wait:g} s)" if wait is not None else ""
        kind = "" if type(error).__name__ in ("HfHubHTTPError", "HTTPStatusError") else f" {type(error).__name__}"
        return f"HTTP {status}{' rate limited' if status == 429 else kind}{asked}"
    if isinstance(error, httpx2.UnsupportedProtocol):
        url = getattr(getattr(error, "_request", None), "url", None)
        return f"a redirect to {url or 'an address'} that is not HTTP(S) ({error})"
    if isinstance(error, httpx2.TimeoutException):
        return f"{type(error).__name__}: no answer in time ({str(error) or 'timed out'})"
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


#: Retry lines on a Dask worker go to this logger; ``download --scheduler`` forwards it to its own stderr.
RETRY_LOGGER = "openmind_prep.sources.retry"


def announce(line: str) -> None:
    """Print a retry line on stderr without breaking tqdm bars; on a Dask worker, log it as a warning of
    :data:`RETRY_LOGGER` (a worker's stderr is its own log, which the user running the command never sees)."""
    from tqdm.auto import tqdm

    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):  # not on a worker
        tqdm.write(line, file=sys.stderr)
        return
    logging.getLogger(RETRY_LOGGER).warning(line)


class _Announce(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        announce(record.getMessage())


def forward_retries(client) -> None:
    """Retry lines logged on the Dask workers of ``client`` (a ``distributed.Client``) printed on this
    process's stderr, as local ones are (``Client.forward_logging`` + one handler, added once)."""
    client.forward_logging(RETRY_LOGGER)
    logger = logging.getLogger(RETRY_LOGGER)
    if not any(isinstance(h, _Announce) for h in logger.handlers):
        logger.addHandler(_Announce())
        logger.propagate = False  # told once, here, not again by a root handler


def retrying(call: Callable, what: str, policy: RetryPolicy, *, sleep: Callable = time.sleep,
             notify: Callable[[str], None] | None = None, resource: str | None = None):
    """``call()`` with retries on transient errors, each announced (``notify``, default stderr).
    Out of retries, or when the next wait would pass the deadline, the last error is re-raised
    as :class:`DownloadError` naming ``what``. ``resource`` (the Hub's rate-limit name of the
    request, ``api`` or ``resolvers``): first wait out a window :data:`RATE_WINDOWS` saw used up.

    >>> calls, said = [], []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionResetError("reset by peer")
    ...     return "ok"
    >>> retrying(flaky, "x", RetryPolicy(base_s=0), notify=said.append), len(calls)
    ('ok', 3)
    >>> said[1]
    'x: retry 2/8 in 0 s: ConnectionResetError: reset by peer'
    """
    notify = notify or announce
    retry = 0
    started = time.monotonic()
    while True:
        policy.check_deadline(what)
        paused = RATE_WINDOWS.wait_s(resource) if resource else 0.0
        if paused > MAX_SERVER_WAIT_S:
            raise DownloadError(what, f"giving up: the hub's {resource!r} rate limit resets in {paused:.3g} s, over "
                                      f"the {MAX_SERVER_WAIT_S:g} s this waits; try again later")
        if paused > 0:
            left = policy.seconds_left()
            if left is not None and paused >= left:
                raise DownloadError(what, f"not finished: the hub's {resource!r} rate limit resets in "
                                          f"{paused:.3g} s, past the --deadline")
            notify(f"{what}: the hub's {resource!r} rate limit is used up; waiting {math.ceil(paused)} s")
            sleep(paused)
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - classified just below
            if not is_transient(e):
                raise
            retry += 1
            if retry > policy.retries:
                raise DownloadError(what, f"giving up after {retry} attempts: {reason(e)}") from e
            asked = server_wait(getattr(_response(e), "headers", None))
            if asked is not None and asked > MAX_SERVER_WAIT_S:
                raise DownloadError(what, f"giving up: the server asks to wait {asked:.3g} s, over the "
                                          f"{MAX_SERVER_WAIT_S:g} s this waits; try again later") from e
            wait = policy.delay(retry, asked)
            if (not ANSWERED.is_set() and _unreachable(e)
                    and time.monotonic() - started + wait > UNREACHED_BUDGET_S):
                raise unreached(what, e) from e
            left = policy.seconds_left()
            if left is not None and wait >= left:
                raise DownloadError(what, f"giving up: retry {retry} would wait {wait:.3g} s, past the "
                                          f"--deadline ({max(left, 0):.3g} s left): {reason(e)}") from e
            notify(f"{what}: retry {retry}/{policy.retries} in {wait:.3g} s: {reason(e)}")
            sleep(wait)
