"""``openmind-prep plan``: time, memory, disk and network for preprocessing a selection."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from openmind_prep.cli.options import selection_options
from openmind_prep.dask_cluster import DEFAULT_BATCH_SIZE
from openmind_prep.selection import Selection


@click.command("plan")
@click.option("--metadata", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="openneuro_metadata.csv; absent: synthesise 114,570 rows with an assumed modality mix.")
@click.option("--workers", type=click.IntRange(min=1), default=64, show_default=True,
              help="Single-threaded Dask workers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per Dask task (default: preprocess's default).")
@click.option("--seconds-per-volume", type=click.FloatRange(min=0), default=None,
              help="Flat cost per volume instead of a calibration.")
@click.option("--from-manifest", "from_manifest", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="Measure costs from this store's manifest (seconds, bytes columns).")
@click.option("--calibrate-on", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Source tree to calibrate on (default: the embedded sample).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--bandwidth", type=click.FloatRange(min=0.001), default=100.0, show_default=True,
              help="Download bandwidth in MB/s (the hub also rate-limits requests).")
@click.option("--memory-limit", default=None, help="Per-worker memory, e.g. 4GiB: count volumes above it.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@selection_options
def plan_command(metadata: Path | None, workers: int, batch_size: int | None, seconds_per_volume: float | None,
                 from_manifest: Path | None, calibrate_on: Path | None, dtype: str, bandwidth: float,
                 memory_limit: str | None, as_json: bool, selection: Selection) -> None:
    """Estimate wall time, peak memory per worker, disk and network for preprocessing the selection."""
    import tempfile

    from openmind_prep.manifest import read_manifest
    from openmind_prep.plan import (CostModel, _parse_bytes, calibrate, cost_from_rows, estimate, render,
                                    synthesise_metadata, volumes_from_records)
    from openmind_prep.metadata import read_metadata
    from openmind_prep.embedded import build_sample_tree

    if metadata is not None:
        records, note = read_metadata(metadata), f"from {metadata}"
    else:
        records, note = synthesise_metadata(), "SYNTHESISED metadata: 114,570 rows, assumed mix"
    records = selection.apply(records)
    if seconds_per_volume is not None:
        cost = CostModel(seconds_per_volume=seconds_per_volume, source=f"flat {seconds_per_volume} s per volume")
    elif from_manifest is not None:
        cost = cost_from_rows(read_manifest(from_manifest).to_pylist(), f"measured in {from_manifest}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            src = calibrate_on or build_sample_tree(Path(tmp) / "sample")
            cost = calibrate(src, Path(tmp), dtype)
    plan = estimate(volumes_from_records(records), cost, workers, batch_size or DEFAULT_BATCH_SIZE,
                    bandwidth_mb_s=bandwidth,
                    memory_limit_bytes=_parse_bytes(memory_limit) if memory_limit else None)
    click.echo(json.dumps(asdict(plan), indent=1) if as_json else render(plan, note, memory_limit))
