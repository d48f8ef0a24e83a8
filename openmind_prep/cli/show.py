"""``openmind-prep show``: three planes of a stored volume as a PNG."""

from __future__ import annotations

from pathlib import Path

import click

from openmind_prep.metadata import strip_nifti_suffix


def _find_image(store: Path, image: str) -> str:
    """Accept a group key, an array path or the CSV image_path; return the group key."""
    from openmind_prep.store import case_exists

    key = strip_nifti_suffix(image.strip("/"))
    if key.endswith("/image"):
        key = key[: -len("/image")]
    if not case_exists(store, f"{key}/image"):
        raise click.BadParameter(f"{store}: no stored image {image!r} (see STORE/manifest.parquet)",
                                 param_hint="IMAGE")
    return key


@click.command("show")
@click.argument("store", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("image")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="PNG to write.")
@click.option("--masks/--no-masks", default=True, help="Draw the stored masks as contours.")
def show_command(store: Path, image: str, out: Path, masks: bool) -> None:
    """Render a preprocessed volume of STORE (three planes) to a PNG.

    IMAGE is the image's path as in the metadata CSV (``ds.../sub-.../anat/x.nii.gz``) or its key.
    """
    from openmind_prep.show import render_volume
    from openmind_prep.store import MASK_NAMES, case_exists, image_array

    key = _find_image(store, image)
    arr = image_array(store, f"{key}/image")
    mask_arrays = {m: image_array(store, f"{key}/{m}")[...] for m in MASK_NAMES
                   if masks and case_exists(store, f"{key}/{m}")}
    title = f"{key}  shape {tuple(arr.shape)}  {arr.dtype}"
    render_volume(arr[...], out, title=title, masks=mask_arrays)
    click.echo(f"wrote {out}")
