"""``openmind-prep show``: three planes of a stored volume as a PNG."""

from __future__ import annotations

from pathlib import Path

import click


def _find_image(store, image: str) -> dict:
    """The manifest row of IMAGE among the ``ok`` images of ``store`` (a :class:`~openmind_prep.store.store.Store`;
    IMAGE: a key, a CSV image_path or a raw-tree path)."""
    from openmind_prep.store.integrity import usable_rows
    from openmind_prep.store.schema import row_key
    from openmind_prep.reports.show import find_image_key

    rows, _ = usable_rows(store.ok_rows())  # a row without its paths is not an image to show
    by_key = {row_key(r): r for r in rows}
    try:
        return by_key[find_image_key(list(by_key), image)]
    except ValueError as e:
        raise click.BadParameter(f"{store.root}: {e}", param_hint="IMAGE") from e


@click.command("show")
@click.argument("store", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("image")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="PNG to write.")
@click.option("--masks/--no-masks", default=True, help="Draw the stored masks as contours.")
def show_command(store: Path, image: str, out: Path, masks: bool) -> None:
    """Render a preprocessed volume of STORE (three planes) to a PNG.

    IMAGE is the image's path as in the metadata CSV (``ds.../sub-.../anat/x.nii.gz``), its key, or a
    path copied from the raw tree (``RAW/OpenMind/ds.../x.nii.gz``); a miss lists close names.
    """
    from openmind_prep.reports.show import render_volume
    from openmind_prep.store.integrity import read_verified
    from openmind_prep.store.schema import ARRAYS, row_key
    from openmind_prep.store.store import Store

    store = Store(store)
    row = _find_image(store, image)
    arrays = read_verified(store, row, ARRAYS if masks else ARRAYS[:1])  # a damaged image is refused, not drawn
    volume, key = arrays.pop("image"), row_key(row)
    title = f"{key}  shape {tuple(volume.shape)}  {volume.dtype}"
    render_volume(volume, out, title=title, masks=arrays)
    click.echo(f"wrote {out}")
