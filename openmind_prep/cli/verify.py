"""``openmind-prep verify STORE``: re-read every stored array and re-check its checksum."""

from __future__ import annotations

from pathlib import Path

import click



@click.command("verify")
@click.argument("store", type=click.Path(path_type=Path, exists=True, file_okay=False))
def verify_command(store: Path) -> None:
    """Re-check the checksum of every array of STORE; exit 1 on any damage."""
    from openmind_prep.store.store import Store
    from openmind_prep.reports.verify import verify_store

    opened = Store.open(store)  # StoreError (one line) without a manifest
    problems = verify_store(opened, progress=True)
    for problem in problems:
        click.echo(f"DAMAGED {problem}", err=True)
    click.echo(f"verified {len(opened.ok_rows())} images: {len(problems)} problem(s)")
    if problems:
        raise SystemExit(1)
