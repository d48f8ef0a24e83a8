"""``openmind-prep show``: three planes of a stored volume as a PNG."""

from __future__ import annotations

from pathlib import Path

import click


def _find_image(store, image: str) -> str:
    """The group key of IMAGE among the ``ok`` images of ``store`` (a :class:`~openmind_prep.store.store.Store`;
    IMAGE: a key, a CSV image_path or a raw-tree path)."""
    from openmind_prep.store.schema import row_key
    from openmind_prep.reports.show import find_image_key

    keys = [row_key(r) for r in store.ok_rows()]
    try:
        return find_image_key(keys, image)
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
    from openmind_prep.store.schema import MASK_NAMES
    from openmind_prep.store.store import Store

    store = Store(store)
    key = _find_image(store, image)
    arr = store.array(f"{key}/image")
    mask_arrays = {m: store.array(f"{key}/{m}")[...] for m in MASK_NAMES if masks and store.has(f"{key}/{m}")}
    title = f"{key}  shape {tuple(arr.shape)}  {arr.dtype}"
    render_volume(arr[...], out, title=title, masks=mask_arrays)
    click.echo(f"wrote {out}")
