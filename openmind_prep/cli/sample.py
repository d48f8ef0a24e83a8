"""``openmind-prep sample``: write the embedded MRI sample tree."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sample")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@click.option("--small", is_flag=True, help="Three small volumes (for quick tries and tests).")
@click.option("--broken", is_flag=True, help="Also write one deliberately broken case per failure mode.")
def sample_command(dest: Path, small: bool, broken: bool) -> None:
    """Write the embedded real-MRI sample to DEST in the OpenMind repo layout."""
    from openmind_prep.sources.embedded import build_sample_tree
    from openmind_prep.sources.openmind import OpenMindSource

    root = build_sample_tree(dest, small=small, broken=broken)
    n = len(OpenMindSource(root).records())
    click.echo(f"wrote {n} images to {root}")
