"""The Dask client that runs preprocessing: a local cluster, an existing scheduler, or SLURM.

Every worker is single-threaded (one image at a time) and sets SimpleITK's global thread count
to 1 when it starts (:class:`SitkThreads`); otherwise each SimpleITK call would try to use all
cores of the node and N workers would oversubscribe it N-fold.
"""

from __future__ import annotations

import functools
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import click



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
            from openmind_prep.onemmiso import set_sitk_threads

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


def cluster_options(command: Callable) -> Callable:
    """Click decorator adding the cluster options; the command receives ``cluster=ClusterConfig``."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Local Dask workers (one thread each). Default: all cores."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Use a running Dask scheduler (e.g. tcp://host:8786) instead."),
        click.option("--cluster", "kind", type=click.Choice(["local", "slurm"]), default="local",
                     show_default=True, help="Start a local cluster or SLURM jobs (dask-jobqueue)."),
        click.option("--memory-limit", default="auto", show_default=True,
                     help="Per local worker, e.g. 4GiB; a worker above it is restarted by Dask."),
        click.option("--queue", default=None, help="SLURM partition."),
        click.option("--cores", type=int, default=8, show_default=True,
                     help="SLURM: cores per job (= single-threaded workers per job)."),
        click.option("--memory", default="32GB", show_default=True, help="SLURM: memory per job."),
        click.option("--walltime", default="04:00:00", show_default=True, help="SLURM: job walltime."),
        click.option("--lifetime", default=None,
                     help="SLURM: retire workers after this (e.g. 3h50m, under --walltime) and start fresh jobs."),
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="SLURM: number of jobs."),
        click.option("--threads-only", "threads_only", is_flag=True, hidden=True,
                     help="Run local workers as threads in this process (tests, debugging)."),
    ]

    @functools.wraps(command)
    def wrapper(workers, scheduler, kind, memory_limit, queue, cores, memory, walltime, lifetime,
                jobs, threads_only, **kwargs):
        config = ClusterConfig(kind=kind, workers=workers, scheduler=scheduler,
                               memory_limit=memory_limit, processes=not threads_only, queue=queue,
                               cores=cores, memory=memory, walltime=walltime, lifetime=lifetime,
                               jobs=jobs)
        return command(cluster=config, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
