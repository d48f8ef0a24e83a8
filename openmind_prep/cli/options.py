"""The click option groups shared by several commands; each hands the command one value object
(``selection=Selection``, ``cluster=ClusterConfig``) or plain values."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import click

from openmind_prep.core.dask_cluster import DEFAULT_BATCH_SIZE, ClusterConfig
from openmind_prep.sources.selection import selection_from_options


def _with(options: list[Callable], command: Callable) -> Callable:
    """``command`` decorated by ``options`` in the order they are listed (as ``--help`` shows them)."""
    for option in reversed(options):
        command = option(command)
    return command


def renamed_option(new: str, old: str, dest: str, **kwargs) -> Callable:
    """Click option ``new`` (the command receives ``dest``) that still answers to its old name
    ``old`` for one release (hidden from ``--help``; using it prints one line on stderr).

    >>> from click.testing import CliRunner
    >>> @click.command()
    ... @renamed_option("--pin", "--lock", "pin_file")
    ... def show(pin_file):
    ...     click.echo(pin_file)
    >>> CliRunner().invoke(show, ["--lock", "p.json"]).output.splitlines()
    ['--lock is deprecated: use --pin (the same option; --lock goes in the next release)', 'p.json']
    """
    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(**values):
            old_value = values.pop(f"{dest}_old")
            if old_value not in (None, False):
                click.echo(f"{old} is deprecated: use {new} (the same option; {old} goes in the next release)",
                           err=True)
                if values.get(dest) in (None, False):
                    values[dest] = old_value
            return command(**values)

        return _with([click.option(new, dest, **kwargs), click.option(old, f"{dest}_old", hidden=True, **kwargs)],
                     wrapper)

    return decorate


def repo_options(command: Callable) -> Callable:
    """Click options ``--repo``, ``--revision``, ``--endpoint`` (default ``$HF_ENDPOINT``), ``--timeout``
    and ``--deadline``; the command receives ``hub=HubRepo`` (the deadline counted from now)."""
    options = [
        click.option("--repo", default="AnonRes/OpenMind", show_default=True,
                     help="Hugging Face dataset repo, or a local folder (or file://PATH) laid out as "
                          "the repo, e.g. from `openmind-prep sample`: served on 127.0.0.1, no network."),
        click.option("--revision", default="main", show_default=True,
                     help="Branch, tag or commit; resolved once to a commit sha that pins every request."),
        click.option("--endpoint", envvar="HF_ENDPOINT", default=None, show_envvar=True,
                     help="Hub or mirror base URL (default https://huggingface.co)."),
        click.option("--timeout", "timeout", type=click.FloatRange(min=0, min_open=True, max=3600), default=10.0,
                     show_default=True, help="Seconds without a byte before a request is retried (connecting: "
                     "at most 10 s); a transfer below 1 KiB/s over this long is a stall, retried later."),
        click.option("--deadline", default=None, metavar="DURATION",
                     help="Stop retrying and starting transfers after this long (e.g. 90s, 30m, 2h); "
                          "unfinished files fail, and a re-run resumes them."),
    ]

    @functools.wraps(command)
    def wrapper(repo, revision, endpoint, timeout, deadline, **kwargs):
        import time

        from openmind_prep.sources.hub import HubRepo
        from openmind_prep.sources.local_hub import local_folder, served
        from openmind_prep.sources.retry import RetryPolicy, parse_duration

        try:
            until = None if deadline is None else time.time() + parse_duration(deadline)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--deadline") from e
        try:
            local_folder(repo)
        except FileNotFoundError as e:
            raise click.BadParameter("no such folder", param_hint="--repo") from e
        with served(repo, endpoint) as (repo, endpoint):  # a local folder: a hub on 127.0.0.1
            hub = HubRepo(repo, revision, endpoint, policy=RetryPolicy(deadline=until),
                          connect_timeout_s=min(10.0, timeout), read_timeout_s=timeout)
            return command(hub=hub, **kwargs)

    return _with(options, wrapper)


def store_options(command: Callable) -> Callable:
    """Click options of every command that writes a store (``preprocess``, ``run``):
    ``--out`` (→ ``store``), ``--dtype``, ``--chunks``, ``--batch-size``."""
    options = [
        click.option("--out", "store", required=True, type=click.Path(path_type=Path, file_okay=False),
                     help="The Zarr v3 store to write (created; re-running resumes)."),
        click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
                     help="Stored image dtype (float16 halves the bytes; ≤1e-2 SD error)."),
        click.option("--chunks", type=click.IntRange(min=8), default=64, show_default=True,
                     help="Inner chunk edge in voxels (all chunks of an array sit in one shard file)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="Images per Dask task (and, in `run`, per download batch)."),
    ]
    return _with(options, command)


def finite(ctx, param, value):
    """A click callback refusing ``nan`` and ``inf`` (``type=float`` accepts them)."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value}: expected a finite number")
    return value


def memory_size(ctx, param, value):
    """A click callback checking a memory size (``4GiB``, ``2e9``; ``auto`` where the default is auto)
    with Dask's own parser, so a typo is a usage error before a cluster starts."""
    if value is None or str(value).strip().lower() == "auto":
        return value
    from dask.utils import parse_bytes

    try:
        ok = parse_bytes(value) > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise click.BadParameter(f"{value!r}: expected a memory size such as 4GiB, 500MB or auto")
    return value


def selection_options(command: Callable) -> Callable:
    """Click decorator adding the selection options; the command receives ``selection=Selection``."""
    options = [
        click.option("--select", "select", metavar="NAME|FILE",
                     help="A shipped selection's name (e.g. t1w-iqs2.5; see manifests/README.md) or a "
                          "selection TOML file; the options below override it."),
        click.option("--modality", "modality", multiple=True,
                     help="Keep only this modality (repeatable), e.g. --modality T1w --modality FLAIR."),
        click.option("--max-iqs", type=float, default=None, callback=finite,
                     help="Keep images with image_quality_score <= this (lower is better; nnssl used 1.5-3.5)."),
        click.option("--dataset", "dataset", multiple=True, help="Keep only this dataset id (repeatable)."),
        click.option("--limit", type=click.IntRange(min=0), default=None,
                     help="Keep the first N selected images (CSV order); 0 means all."),
    ]

    @functools.wraps(command)  # keeps the command's own click params (__click_params__)
    def wrapper(select, modality, max_iqs, dataset, limit, **kwargs):
        try:
            selection = selection_from_options(select, modality, max_iqs, dataset, limit)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--select") from e
        return command(selection=selection, **kwargs)

    return _with(options, wrapper)


#: The kinds ``--source-kind`` names (``openmind_prep.sources.detect.KINDS``; spelled here so that
#: ``--help`` does not import the sources).
SOURCE_KINDS = ("openmind", "folder", "nnssl", "nnunet")


def source_options(command: Callable) -> Callable:
    """Click options ``--source-kind`` and ``--mask-pattern`` of the commands that read a source
    (``preprocess``, ``run``, ``plan``); the command receives both and calls :func:`open_source_from`."""
    options = [
        click.option("--source-kind", type=click.Choice(SOURCE_KINDS), default=None,
                     help="What the source is, instead of detecting it: openmind (openneuro_metadata.csv + "
                          "OpenMind/), folder (NIfTI files at any depth), nnssl (pretrain_data.json), nnunet "
                          "(an nnU-Net raw dataset). See docs/sources.md."),
        click.option("--mask-pattern", default=None, metavar="[anat_mask=|anon_mask=]TEMPLATE",
                     help="Folder sources: an image's mask file, from its path without .nii/.nii.gz, e.g. "
                          "'{stem}_mask.nii.gz' (a foreground mask; anon_mask= for a defacing mask)."),
    ]
    return _with(options, command)


def open_source_from(path: Path, kind: str | None, mask_pattern: str | None):
    """The :class:`~openmind_prep.sources.base.Source` at ``path`` (``open_source``); a bad kind or
    pattern is a usage error (exit 2), a bad input file one line (exit 1)."""
    from openmind_prep.core.paths import InputError
    from openmind_prep.sources.detect import open_source

    try:
        return open_source(path, kind, mask_pattern=mask_pattern)
    except InputError:
        raise
    except ValueError as e:
        raise click.UsageError(str(e)) from e


def cluster_options(command: Callable) -> Callable:
    """Click decorator adding the cluster options; the command receives ``cluster=ClusterConfig``."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Local Dask workers (one thread each). Default: all cores."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Use a running Dask scheduler (e.g. tcp://host:8786) instead."),
        click.option("--cluster", "kind", type=click.Choice(["local", "slurm"]), default="local",
                     show_default=True, help="Start a local cluster or SLURM jobs (dask-jobqueue)."),
        click.option("--memory-limit", default="auto", show_default=True, callback=memory_size,
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

    return _with(options, wrapper)
