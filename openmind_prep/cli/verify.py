"""``openmind-prep verify STORE``: re-read every stored array and re-check its checksum."""

from __future__ import annotations

from pathlib import Path

import click



@click.command("verify")
@click.argument("store", type=click.Path(path_type=Path, exists=True, file_okay=False))
def verify_command(store: Path) -> None:
    """Re-check the checksum of every array of STORE; exit 1 on any damage."""
    from openmind_prep.manifest import OK, read_manifest
    from openmind_prep.verify import verify_store

    problems = verify_store(store, progress=True)
    for problem in problems:
        click.echo(f"DAMAGED {problem}", err=True)
    n = sum(r["status"] == OK for r in read_manifest(store).to_pylist())
    click.echo(f"verified {n} images: {len(problems)} problem(s)")
    if problems:
        raise SystemExit(1)
