"""``openmind-prep preprocess``: onemmiso of a source tree into a Zarr store on Dask (+ the
closing summary shared with ``run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from openmind_prep.cli.options import (cluster_options, open_source_from, selection_options, source_options,
                                       store_options)
from openmind_prep.core.dask_cluster import ClusterConfig
from openmind_prep.sources.metadata import ImageRecord
from openmind_prep.sources.selection import Selection


@click.command("preprocess")
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@source_options
@store_options
@click.option("--format", "formats", default="zarr", show_default=True,
              type=click.Choice(["zarr", "zarr,webdataset"]),
              help="Also write WebDataset tar shards (openmind_prep.shards.writer) into --shards.")
@click.option("--shards", "shards_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Shard folder for --format zarr,webdataset [default: <out>-wds].")
@click.option("--shard-size", default="auto", show_default=True,
              help="Target bytes per tar shard (e.g. 1GB); auto: at least 16 shards, at most 1 GB each.")
@selection_options
@cluster_options
def preprocess_command(src: Path, source_kind: str | None, mask_pattern: str | None, store: Path, dtype: str,
                       chunks: int, batch_size: int, formats: str, shards_dir: Path | None, shard_size: str,
                       selection: Selection, cluster: ClusterConfig) -> None:
    """Preprocess SRC into the Zarr store --out with onemmiso (nnssl-exact). SRC is an OpenMind tree
    (openneuro_metadata.csv + OpenMind/), a folder of NIfTI files, nnssl's pretrain_data.json (or its
    folder) or an nnU-Net raw dataset; the first line names the kind found (--source-kind overrides)."""
    from openmind_prep.preprocess.job import PreprocessOptions, disk_full, preprocess
    from openmind_prep.shards.writer import parse_size

    try:  # checked before any work, not after it
        shard_bytes = parse_size(shard_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard-size") from e
    options = PreprocessOptions(dtype=dtype, chunks=chunks)
    source = open_source_from(src, source_kind, mask_pattern)
    try:
        records, rows, table = preprocess(source, store, selection, cluster, options, batch_size=batch_size,
                                          say=click.echo)
    except OSError as e:
        if not disk_full(e):
            raise
        raise click.ClickException(f"disk full while writing {store} ({e}). Finished batches are kept; free "
                                   "space and re-run the same command to resume.") from e
    if "webdataset" in formats:  # shards of every ok image (resumable: finished shards are kept)
        from openmind_prep.shards.writer import merge_index, write_shards

        shards_dir = shards_dir or Path(store).with_name(Path(store).name + "-wds")
        write_shards(store, shards_dir, shard_size=shard_bytes, rows=table.to_pylist())
        click.echo(f"webdataset: {merge_index(shards_dir)['samples']} samples in {shards_dir}")
    report(records, rows, table, store)


def report(records: Sequence[ImageRecord], rows: Sequence[dict], table, store: Path) -> None:
    """The closing summary of ``preprocess`` and ``run``: counts, the first 20 failures (stderr), and
    exit status 1 when any selected image is not ``ok``. ``rows`` are this run's, ``table`` the
    merged manifest."""
    from openmind_prep.store.manifest import OK

    manifest = {r["image_path"]: r for r in table.to_pylist()}
    selected = [manifest.get(r.image_path) for r in records]
    failed = [r for r in selected if r is None or r["status"] != OK]
    n_ok = len(selected) - len(failed)
    click.echo(f"{len(records)} selected: {n_ok} ok ({len(records) - len(rows)} already done), "
               f"{len(failed)} failed; manifest: {Path(store) / 'manifest.parquet'}")
    for row in failed[:20]:
        click.echo(f"  FAILED {row['error'] if row else '(no row)'}", err=True)
    if len(failed) > 20:
        click.echo(f"  ... and {len(failed) - 20} more (status == 'failed' in the manifest)", err=True)
    if failed:
        raise SystemExit(1)
