"""``openmind-prep download``: a selection (or a pinned list) from the hub into RAW, verified."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from openmind_prep.cli.options import renamed_option, repo_options, selection_options
from openmind_prep.sources.selection import Selection

if TYPE_CHECKING:
    from openmind_prep.sources.hub import HubRepo


@click.command("download")
@repo_options
@click.option("--out", "raw", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="RAW folder; keeps the repo layout (RAW/openneuro_metadata.csv, RAW/OpenMind/...).")
@renamed_option("--pin", "--lock", "pin_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                help="Replay this pinned list (exact commit and files); selection options are not allowed.")
@renamed_option("--write-pin", "--write-lock", "write_pin", type=click.Path(path_type=Path, dir_okay=False),
                help="Write the resolved pinned list here (e.g. manifests/pins/NAME.json).")
@renamed_option("--pin-only", "--lock-only", "pin_only", is_flag=True,
                help="Resolve and write the pinned list, download no images.")
@click.option("--download-workers", "workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Concurrent downloads (the hub rate-limits; keep it small).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the download tasks on a running Dask cluster (e.g. tcp://host:8786) whose workers "
                   "share RAW's file system; default: threads of this process.")
@click.option("--verify-all", is_flag=True,
              help="Re-hash every file already in RAW instead of trusting the record of verified files "
                   "(catches bytes changed in place with size and mtime kept); re-fetches what differs.")
@selection_options
def download_command(hub: HubRepo, raw: Path, pin_file: Path | None, write_pin: Path | None,
                     pin_only: bool, workers: int, scheduler: str | None, verify_all: bool,
                     selection: Selection) -> None:
    """Download a selection of OpenMind from the Hugging Face hub into RAW, verifying every file
    (size + LFS sha256); re-running resumes and skips verified files."""
    from openmind_prep.core.runlock import LockHeld
    from openmind_prep.sources.download import download
    from openmind_prep.sources.hub import DownloadError
    from openmind_prep.sources.pinned import PinnedList

    pin = None
    if pin_file is not None:
        if selection != Selection():
            raise click.UsageError("--pin replays a fixed file list; drop the selection options")
        try:
            pin = PinnedList.read(pin_file)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--pin") from e
    from contextlib import nullcontext

    if scheduler:
        from distributed import Client

        from openmind_prep.sources.retry import forward_retries

        connection = Client(scheduler)
        forward_retries(connection)  # the workers' retry lines on this command's stderr
    else:
        connection = nullcontext()
    try:
        with connection as client:
            pin, report = download(hub, raw.absolute(), selection=selection, pin=pin, write_pin=write_pin,
                                    pin_only=pin_only, workers=workers, client=client, verify_all=verify_all)
    except (DownloadError, ValueError, LockHeld) as e:  # ValueError: the repo's CSV cannot be read (file, line)
        raise click.ClickException(str(e)) from e
    head = f"{pin.repo}@{pin.commit[:12]}: {len(pin.images)} images, {len(pin.files) + len(pin.missing)} files"
    if pin_file is None and selection.limit and len(pin.images) < selection.limit:
        click.echo(f"--limit {selection.limit}: only {len(pin.images)} image(s) match the selection "
                   f"({selection.name}); all of them are taken", err=True)
    if write_pin is not None:
        click.echo(f"pinned list written: {write_pin}")
    if report is None:
        click.echo(head)
        return
    csv_new = report.metadata_transferred  # the metadata CSV, one of the files, is not in the data files
    click.echo(f"{head}; {len(report.transferred) + csv_new} downloaded "
               f"({(report.bytes + csv_new * pin.metadata.size) / 1e6:.1f} MB), "
               f"{len(report.skipped) + (not csv_new)} already verified, {len(report.failed)} failed -> {raw}")
    for path, reason in report.failed[:20]:
        click.echo(f"  FAILED {reason}", err=True)
    if report.failed:
        raise SystemExit(1)
