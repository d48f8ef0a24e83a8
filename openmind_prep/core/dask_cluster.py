"""The Dask client that runs preprocessing: a local cluster, an existing scheduler, or SLURM.

Every worker is single-threaded (one image at a time) and sets SimpleITK's global thread count
to 1 when it starts (:class:`SitkThreads`); otherwise each SimpleITK call would try to use all
cores of the node and N workers would oversubscribe it N-fold.

One local worker needs no cluster: :class:`InProcess` runs the tasks on one thread of this
process (same task functions, same bounded submission, same per-image memory budget), so a small
job starts at once instead of after Dask's scheduler and worker processes (seconds).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

#: Images per Dask task (and per download batch in ``run``); ``plan`` estimates with it.
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class ClusterConfig:
    """Where the work runs.

    ``kind``: ``local`` (``workers`` single-threaded processes, default all cores; ``processes``
    False runs them as threads in this process, for tests and debugging), ``slurm`` (``jobs``
    batch jobs of ``cores`` single-threaded workers each, via dask-jobqueue). ``scheduler``
    (an address) overrides both and connects to a running cluster.

    >>> ClusterConfig(workers=2).n_workers
    2
    """

    kind: str = "local"
    workers: int | None = None
    scheduler: str | None = None
    memory_limit: str = "auto"
    processes: bool = True
    queue: str | None = None
    cores: int = 8
    memory: str = "32GB"
    walltime: str = "04:00:00"
    lifetime: str | None = None
    jobs: int = 1

    @property
    def n_workers(self) -> int:
        """Local worker count (all cores when unset)."""
        return self.workers or os.cpu_count() or 1


def set_sitk_threads(n: int) -> None:
    """Set SimpleITK's global (per-process) thread count; call it once in each worker process.

    >>> set_sitk_threads(1)
    """
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))


def __getattr__(name: str):
    """``SitkThreads`` is built on first use so importing this module (for the click options)
    does not import distributed; it is still picklable by reference as ``cluster.SitkThreads``."""
    if name != "SitkThreads":
        raise AttributeError(name)
    if "SitkThreads" in globals():
        return globals()["SitkThreads"]
    from distributed.diagnostics.plugin import WorkerPlugin

    class SitkThreads(WorkerPlugin):
        """Worker plugin: SimpleITK's global thread count (per process) set to ``threads``."""

        name = "openmind-prep-sitk-threads"

        def __init__(self, threads: int = 1) -> None:
            self.threads = threads

        def setup(self, worker) -> None:
            set_sitk_threads(self.threads)

    SitkThreads.__qualname__ = "SitkThreads"
    globals()["SitkThreads"] = SitkThreads
    return SitkThreads


def slurm_cluster(config: ClusterConfig):
    """A dask-jobqueue ``SLURMCluster`` (no job submitted yet): ``cores`` single-threaded
    workers per job, ``memory`` split between them, workers retired after ``lifetime``.

    >>> c = slurm_cluster(ClusterConfig(kind="slurm", queue="cpu", cores=4, lifetime="3h50m"))
    >>> "--nworkers 4" in c.job_script() and "--lifetime 3h50m" in c.job_script()
    True
    >>> c.close()
    """
    from dask_jobqueue import SLURMCluster

    extra = []  # processes == cores: one thread per worker
    if config.lifetime:  # retire workers before the job's walltime; adapt() replaces them
        extra += ["--lifetime", config.lifetime, "--lifetime-stagger", "2m"]
    return SLURMCluster(queue=config.queue, cores=config.cores, processes=config.cores,
                        memory=config.memory, walltime=config.walltime, worker_extra_args=extra,
                        scheduler_options={"dashboard_address": ":0"})


@contextmanager
def dask_client(config: ClusterConfig) -> Iterator["distributed.Client"]:  # noqa: F821
    """Start (or connect to) the cluster, yield a ``distributed.Client``, shut down after.

    >>> with dask_client(ClusterConfig(workers=1, processes=False)) as client:
    ...     client.submit(sum, [1, 2]).result()
    3
    """
    import dask
    from distributed import Client, LocalCluster

    cluster, stack = None, ExitStack()
    if config.scheduler:
        client = Client(config.scheduler)
    elif config.kind == "slurm":
        cluster = slurm_cluster(config)
        if config.lifetime:
            cluster.adapt(minimum_jobs=config.jobs, maximum_jobs=config.jobs)
        else:
            cluster.scale(jobs=config.jobs)
        client = Client(cluster)
    elif config.kind == "local":
        # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which turns off glibc's adaptive
        # mmap threshold: every volume-sized array is then mmapped and page-faulted afresh,
        # measured here to make preprocessing ~2x slower. Workers keep glibc's defaults.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": environ}))
        cluster = LocalCluster(n_workers=config.n_workers, threads_per_worker=1,
                               processes=config.processes, memory_limit=config.memory_limit,
                               dashboard_address=":0")  # any free port: runs side by side
        client = Client(cluster)
    else:
        raise ValueError(f"unknown cluster kind {config.kind!r} (local | slurm)")
    try:
        client.register_plugin(__getattr__("SitkThreads")(1))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        stack.close()


def in_process(config: ClusterConfig) -> bool:
    """Whether ``config`` asks for one local worker: run in this process, no cluster.

    >>> in_process(ClusterConfig(workers=1)), in_process(ClusterConfig(workers=2))
    (True, False)
    >>> in_process(ClusterConfig(workers=1, scheduler="tcp://h:8786"))
    False
    """
    return config.kind == "local" and config.scheduler is None and config.n_workers == 1


_budget = threading.local()


def in_process_memory_limit() -> int | None:
    """The memory limit (bytes) of the :class:`InProcess` worker running the calling task, or None."""
    return getattr(_budget, "limit", None)


def _memory_bytes(limit: str | int | float | None) -> int | None:
    """``--memory-limit`` in bytes for the one in-process worker: ``auto`` = the machine's memory
    (what Dask gives a single local worker), ``0`` / None = no limit.

    >>> _memory_bytes("2GiB"), _memory_bytes(0), _memory_bytes("auto") > 0
    (2147483648, None, True)
    """
    if limit in (None, 0, "0"):
        return None
    if isinstance(limit, str) and limit.strip().lower() == "auto":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if isinstance(limit, str):
        from dask.utils import parse_bytes

        return int(parse_bytes(limit))
    return int(limit)


class InProcess:
    """The one local worker, as a thread of this process: ``submit(fn, *args)`` returns a
    ``concurrent.futures.Future``; tasks run one at a time with SimpleITK on one thread and the
    worker's memory budget (:func:`in_process_memory_limit`). A task that raises fails its future,
    as a Dask task would; a crash of the process ends the run (re-run the command to resume).

    >>> with InProcess() as worker:
    ...     worker.submit(sum, [1, 2]).result(), worker.nthreads()
    (3, {'in-process': 1})
    """

    def __init__(self, memory_limit: str | int | None = "auto") -> None:
        self.memory_limit = _memory_bytes(memory_limit)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="openmind-prep-worker",
                                                           initializer=self._setup)

    def _setup(self) -> None:
        _budget.limit = self.memory_limit
        set_sitk_threads(1)

    def submit(self, fn: Callable, *args: Any, pure: bool = True, **kwargs: Any) -> concurrent.futures.Future:
        return self._pool.submit(fn, *args, **kwargs)

    def nthreads(self) -> dict[str, int]:
        return {"in-process": 1}

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe(config: ClusterConfig) -> str:
    """What :func:`dask_client` will start or join, for the status line.

    >>> describe(ClusterConfig(workers=2)), describe(ClusterConfig(scheduler="tcp://h:8786"))
    ('2 local Dask workers', 'the Dask scheduler at tcp://h:8786')
    >>> describe(ClusterConfig(workers=1))
    '1 local worker in this process (no Dask cluster)'
    """
    if config.scheduler:
        return f"the Dask scheduler at {config.scheduler}"
    if config.kind == "slurm":
        return f"{config.jobs} SLURM job(s) of {config.cores} Dask workers"
    if in_process(config):
        return "1 local worker in this process (no Dask cluster)"
    return f"{config.n_workers} local Dask worker{'s' if config.n_workers != 1 else ''}"


class BackgroundClient:
    """Start :func:`dask_client` on a thread now, so the cluster comes up while the caller resolves
    its selection; :meth:`get` waits for it. ``status`` receives one line when the start begins and
    one when the cluster is ready (default: stderr). Closing joins the start and shuts it down.

    >>> with BackgroundClient(ClusterConfig(workers=1, processes=False), status=lambda s: None) as bg:
    ...     bg.get().submit(sum, [1, 2]).result()
    3
    """

    def __init__(self, config: ClusterConfig, status: Callable[[str], None] | None = None) -> None:
        self._status = status or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stack = ExitStack()
        self._client = None
        self._error: BaseException | None = None
        self._status(f"running on {describe(config)}" if in_process(config) else f"starting {describe(config)} ...")
        self._thread = threading.Thread(target=self._start, args=(config,), name="openmind-prep-dask", daemon=True)
        self._thread.start()

    def _start(self, config: ClusterConfig) -> None:
        start = time.perf_counter()
        try:
            if in_process(config):
                self._client = self._stack.enter_context(InProcess(config.memory_limit))
                return
            self._client = self._stack.enter_context(dask_client(config))
            self._status(f"Dask ready ({describe(config)}) after {time.perf_counter() - start:.1f} s")
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread by get()
            self._error = e

    def get(self):
        """The ``distributed.Client`` once the cluster is up (re-raises a failed start)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        self._thread.join()
        self._stack.close()

    def __enter__(self) -> "BackgroundClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def client_of(client):
    """A ``distributed.Client`` from a client or a :class:`BackgroundClient` (waits for its start)."""
    return client.get() if isinstance(client, BackgroundClient) else client


def bounded_submit(submit: Callable[[Any], Any], queue: deque, in_flight: int) -> Iterator[tuple[Any, Any]]:
    """Submit each item of ``queue`` (taken from the left) with ``submit(item) -> Future``, at most
    ``in_flight`` at a time, so the scheduler never holds the whole list; yields ``(item, future)``
    as tasks finish. Items the caller adds to ``queue`` while handling a result (e.g. a failed
    batch split up) are submitted too. Dask futures or an :class:`InProcess` worker's. The one
    bounded-submit loop of the project.

    >>> with dask_client(ClusterConfig(workers=1, processes=False)) as client:
    ...     done = bounded_submit(lambda n: client.submit(pow, n, 2), deque([1, 2, 3]), in_flight=2)
    ...     sorted((n, f.result()) for n, f in done)
    [(1, 1), (2, 4), (3, 9)]
    >>> with InProcess() as worker:
    ...     sorted((n, f.result()) for n, f in bounded_submit(lambda n: worker.submit(pow, n, 2), deque([1, 2]), 1))
    [(1, 1), (2, 4)]
    """
    owner: dict = {}
    if queue:  # the first future says whose it is: an InProcess worker's, or a Dask client's
        item = queue.popleft()
        owner[submit(item)] = item
    if owner and isinstance(next(iter(owner)), concurrent.futures.Future):
        while owner:
            done, _ = concurrent.futures.wait(list(owner), return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                yield owner.pop(future), future
                while queue and len(owner) < in_flight:
                    item = queue.popleft()
                    owner[submit(item)] = item
        return
    from distributed import as_completed

    running = as_completed(list(owner))

    def fill() -> None:
        while queue and len(owner) < in_flight:
            item = queue.popleft()
            future = submit(item)
            owner[future] = item
            running.add(future)

    fill()
    for future in running:
        yield owner.pop(future), future
        fill()
