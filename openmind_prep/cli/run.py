"""``openmind-prep run``: download (or copy) → preprocess → delete raw, as a stream."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from openmind_prep.cli.options import (cluster_options, open_source_from, renamed_option, repo_options,
                                       selection_options, source_options, store_options)
from openmind_prep.core.dask_cluster import ClusterConfig
from openmind_prep.sources.selection import Selection

if TYPE_CHECKING:
    from openmind_prep.sources.hub import HubRepo


@click.command("run")
@repo_options
@click.option("--source", type=click.Path(path_type=Path, exists=True),
              help="A local source instead of the hub (--repo is then ignored): an OpenMind tree, a folder "
                   "of NIfTI files, a pretrain_data.json or an nnU-Net raw dataset (docs/sources.md).")
@source_options
@store_options
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where raw files wait for preprocessing. Default: <STORE>.raw next to the store.")
@click.option("--max-raw-gb", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Bound on image + mask bytes (complete or partial) in --work at any time.")
@click.option("--keep-raw", is_flag=True, help="Keep the raw files (then --max-raw-gb does not apply).")
@renamed_option("--pin", "--lock", "pin_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                help="Replay a pinned list (download --write-pin: exact commit and files) instead of resolving "
                     "a selection.")
@click.option("--download-workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Concurrent downloads.")
@selection_options
@cluster_options
def run_command(hub: HubRepo, source: Path | None, source_kind: str | None, mask_pattern: str | None, store: Path,
                work: Path | None, max_raw_gb: float, keep_raw: bool, pin_file: Path | None,
                download_workers: int, dtype: str, chunks: int, batch_size: int, selection: Selection,
                cluster: ClusterConfig) -> None:
    """Download (or copy from --source), preprocess and delete raw files in a stream, keeping at
    most --max-raw-gb of raw bytes on disk; writes the same store as download + preprocess."""
    from openmind_prep.core.dask_cluster import BackgroundClient
    from openmind_prep.store.store import Store  # StoreError (another run holds it): one line via the shell
    from openmind_prep.cli.preprocess import report
    from openmind_prep.sources.hub import DownloadError
    from openmind_prep.preprocess.job import PreprocessOptions
    from openmind_prep.preprocess.stream import RawBudgetError, hub_items, source_items, stream

    work = Path(work) if work else Path(store).with_name(Path(store).name + ".raw")
    work.mkdir(parents=True, exist_ok=True)
    if pin_file is not None and selection != Selection():
        raise click.UsageError("--pin replays a fixed file list; drop the selection options")
    if source is None and (source_kind or mask_pattern):
        raise click.UsageError("--source-kind and --mask-pattern apply to --source")
    if source is not None and pin_file is not None:
        raise click.UsageError("--pin applies to the hub, not to --source")
    local = open_source_from(Path(source), source_kind, mask_pattern) if source is not None else None
    target = Store.create(store)
    with target.lock("run"):
        if local is not None:  # listed before the cluster starts: the source's line comes first
            items, fetch = source_items(local, selection, work, say=click.echo)
            target.note_source(local.kind, local.root, local.origin)
        with BackgroundClient(cluster) as client:  # the cluster starts as the hub's selection resolves
            if local is None:
                try:
                    items, fetch = hub_items(hub, selection, work, pin_file, download_workers)
                except (DownloadError, ValueError) as e:
                    raise click.ClickException(str(e)) from e
                target.note_source("openmind", f"hf://datasets/{_hub_name(hub, pin_file)}/OpenMind")
            options = PreprocessOptions(dtype=dtype, chunks=chunks)
            try:
                rows = stream(items, fetch, work, target, client, options, max_raw_bytes=int(max_raw_gb * 1e9),
                              keep_raw=keep_raw, batch_size=batch_size,
                              source=local.staged(work) if local is not None else None)
            except RawBudgetError as e:
                raise click.UsageError(str(e)) from e
        table = target.merge()
    report([i.record for i in items], rows, table, store)


def _hub_name(hub: "HubRepo", pin_file: Path | None) -> str:
    """``repo@revision`` the images came from: the pinned list's commit when one is replayed."""
    from openmind_prep.sources.pinned import PinnedList

    if pin_file is None:
        return f"{hub.repo_id}@{hub.revision}"
    pin = PinnedList.read(pin_file)
    return f"{pin.repo}@{pin.commit}"
