"""``openmind-prep plan``: time, memory, disk and network for preprocessing a selection."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from openmind_prep.cli.options import (finite, memory_size, open_source_from, renamed_option, selection_options,
                                       source_options)
from openmind_prep.core.dask_cluster import DEFAULT_BATCH_SIZE
from openmind_prep.sources.transfers import RESOLVE_QUOTA_PER_5MIN
from openmind_prep.sources.selection import Selection


@click.command("plan")
@click.option("--source", "source_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="Estimate for this source's images (any kind; docs/sources.md). Absent, and no --metadata: "
                   "synthesise 114,570 OpenMind rows with an assumed modality mix.")
@source_options
@click.option("--metadata", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="OpenMind's openneuro_metadata.csv alone (the images need not be there yet).")
@click.option("--workers", type=click.IntRange(min=1), default=64, show_default=True,
              help="Single-threaded Dask workers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per Dask task (default: preprocess's default).")
@click.option("--seconds-per-volume", type=click.FloatRange(min=0, max=7 * 86400), default=None, callback=finite,
              help="Flat cost per volume instead of a calibration.")
@click.option("--from-manifest", "from_manifest", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="Measure costs from this store's manifest (seconds, bytes columns).")
@click.option("--calibrate-on", type=click.Path(path_type=Path, exists=True), default=None,
              help="A source to calibrate on, any kind (default: the embedded sample).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@renamed_option("--pin", "--lock", "pin_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                default=None, help="A pinned list (download --write-pin): estimate exactly its images, with "
                                   "their exact bytes.")
@click.option("--bandwidth", type=click.FloatRange(min=0.001), default=100.0, show_default=True,
              help="Download bandwidth in MB/s.")
@click.option("--requests-per-5min", "quota", type=click.IntRange(min=1), default=RESOLVE_QUOTA_PER_5MIN,
              show_default=True, help="The hub's quota of file (resolve) requests per 5-minute window: 3000 "
              "anonymous, 5000 a free account (its rate-limits page); higher on paid plans.")
@click.option("--download-workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Concurrent downloads (as download / run --download-workers).")
@click.option("--memory-limit", default=None, callback=memory_size, help="Per-worker memory, e.g. 4GiB: count volumes above it.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@selection_options
def plan_command(source_path: Path | None, source_kind: str | None, mask_pattern: str | None,
                 metadata: Path | None, workers: int, batch_size: int | None, seconds_per_volume: float | None,
                 from_manifest: Path | None, calibrate_on: Path | None, dtype: str, pin_file: Path | None,
                 bandwidth: float, quota: int, download_workers: int, memory_limit: str | None, as_json: bool,
                 selection: Selection) -> None:
    """Estimate wall time, peak memory per worker, disk and network for preprocessing the selection,
    and print the command that runs it."""
    from openmind_prep.sources.transfers import selection_flags, suggest_max_raw_gb
    from openmind_prep.store.manifest import read_manifest
    from openmind_prep.reports.estimate import CostModel, _parse_bytes, cost_from_rows, estimate, render
    from openmind_prep.sources.selection import named_selections

    if pin_file is not None and selection != Selection():
        raise click.UsageError("--pin fixes the images; drop the selection options")
    if source_path is not None and (metadata is not None or pin_file is not None):
        raise click.UsageError("--source names the images; drop --metadata / --pin")
    if source_path is None and (source_kind or mask_pattern) and calibrate_on is None:
        raise click.UsageError("--source-kind and --mask-pattern apply to --source or --calibrate-on")
    lines: list[str] = []  # the source's line and selection notes: printed first, or in the JSON
    source = open_source_from(source_path, source_kind, mask_pattern) if source_path is not None else None
    records, note, file_bytes, files, csv_bytes = _records(source, metadata, pin_file, selection, lines.append)
    for line in lines if not as_json else ():
        click.echo(line)
    if seconds_per_volume is not None:
        cost = CostModel(seconds_per_volume=seconds_per_volume, source=f"flat {seconds_per_volume} s per volume")
    elif from_manifest is not None:
        cost = cost_from_rows(read_manifest(from_manifest).to_pylist(), f"measured in {from_manifest}")
    else:
        cost = _calibrate(open_source_from(calibrate_on, source_kind, mask_pattern) if calibrate_on else None, dtype)
    from openmind_prep.reports.estimate import volumes_from_records

    batch = batch_size or DEFAULT_BATCH_SIZE
    volumes = volumes_from_records(records, file_bytes, files)
    plan = estimate(volumes, cost, workers, batch, bandwidth_mb_s=bandwidth,
                    memory_limit_bytes=_parse_bytes(memory_limit) if memory_limit else None,
                    quota_per_5min=quota, download_workers=download_workers,
                    **({"metadata_bytes": csv_bytes} if csv_bytes is not None else {}))
    if as_json:
        click.echo(json.dumps({**asdict(plan), **({"source": lines} if lines else {})}, indent=1))
        return
    max_raw = suggest_max_raw_gb(list(volumes.file_bytes), workers, batch)
    source = ["--pin", str(pin_file)] if pin_file else selection_flags(selection, named_selections())
    command = " ".join(["openmind-prep run --out STORE", *source, f"--max-raw-gb {max_raw}", f"--workers {workers}",
                        f"--download-workers {download_workers}"])
    click.echo(render(plan, note, memory_limit, raw_note="exact, from the pinned list" if pin_file else "estimated",
                      max_raw_gb=max_raw, next_command=command))


def _records(source, metadata: Path | None, pin_file: Path | None, selection: Selection, say):
    """(records, note, exact file bytes, files per image, metadata CSV bytes) for the plan; the last
    three None unless a pin gives them. ``say`` gets the source's line and selection notes."""
    from openmind_prep.sources.base import select
    from openmind_prep.sources.metadata import METADATA_CSV, record_from_row
    from openmind_prep.sources.openmind import OpenMindSource
    from openmind_prep.core.paths import strip_nifti_suffix
    from openmind_prep.reports.estimate import synthesise_metadata

    if pin_file is None:
        if source is None and metadata is not None:
            source = OpenMindSource.from_csv(metadata)
        if source is not None:
            listed = source.records()
            say(source.describe(len(listed)))
            return select(source, selection, listed, say), f"from {metadata or source.origin}", None, None, None
        return (selection.apply(synthesise_metadata()), "SYNTHESISED metadata: 114,570 rows, assumed mix",
                None, None, None)
    from openmind_prep.sources.pinned import PinnedList

    try:
        pin = PinnedList.read(pin_file)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--pin") from e
    by_path = {r.image_path: r for r in OpenMindSource.from_csv(metadata).records()} if metadata is not None else {}
    sizes: dict[str, list[int]] = {}
    for f in pin.data_files:  # OpenMind/<image_path> and OpenMind/<stem>__Data/<mask>
        rel = f.path.split("/", 1)[1] if "/" in f.path else f.path
        owner = rel.split("__Data/", 1)[0] if "__Data/" in rel else strip_nifti_suffix(rel)
        sizes.setdefault(owner, []).append(f.size)
    records, nbytes, files = [], [], []
    for image in pin.images:
        modality = strip_nifti_suffix(image).rsplit("_", 1)[-1]  # BIDS suffix, when no CSV is given
        records.append(by_path.get(image) or record_from_row({"image_path": image, "modality": modality}))
        own = sizes.get(strip_nifti_suffix(image), [])
        nbytes.append(float(sum(own)))
        files.append(len(own))
    note = f"pinned list {pin_file.name}: {pin.repo}@{pin.commit[:12]}, {METADATA_CSV} {pin.metadata.size:,} B"
    return records, note, nbytes, files, pin.metadata.size


def _calibrate(calibrate_on, dtype: str):
    """Calibrate on a source (default: the embedded sample), one line per image on stderr."""
    import tempfile
    import time

    from openmind_prep.reports.estimate import calibrate

    def progress(done: int, total: int, image: str, seconds: float) -> None:
        click.echo(f"calibrating {done}/{total}: {image} ({seconds:.1f} s)", err=True)

    with tempfile.TemporaryDirectory() as tmp:
        src = calibrate_on
        if src is None:
            try:
                from openmind_prep.sources.embedded import build_sample_tree
                t0 = time.perf_counter()
                click.echo("calibrating: writing the embedded real-MRI sample (6 volumes) ...", err=True)
                src = build_sample_tree(Path(tmp) / "sample")
            except ImportError as e:
                raise click.UsageError(f"calibrating needs the embedded sample ({e.name} is missing: pip install "
                                       "'openmind-prep[sample]'), or give --calibrate-on SRC, --from-manifest "
                                       "STORE or --seconds-per-volume S") from e
            click.echo(f"calibrating: sample written in {time.perf_counter() - t0:.1f} s; preprocessing each "
                       "volume on one thread", err=True)
        return calibrate(src, Path(tmp), dtype, progress=progress)
