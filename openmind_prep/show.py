"""``openmind-prep show STORE IMAGE --out x.png``: three orthogonal mid-planes of a stored volume.

Arrays are stored in on-disk voxel order (z, y, x as SimpleITK reads them), 1 mm isotropic, so
each plane is drawn with equal aspect. Masks stored with the image are drawn as contours.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from openmind_prep.metadata import strip_nifti_suffix

_PLANES = (("axial (z mid)", 0), ("coronal (y mid)", 1), ("sagittal (x mid)", 2))
_MASK_COLOURS = {"anon_mask": "tab:orange", "anat_mask": "tab:cyan"}


def mid_planes(volume: np.ndarray) -> list[np.ndarray]:
    """The three central slices of a 3-D array, one per axis.

    >>> [p.shape for p in mid_planes(np.zeros((4, 5, 6)))]
    [(5, 6), (4, 6), (4, 5)]
    """
    return [np.take(volume, volume.shape[axis] // 2, axis=axis) for axis in range(3)]


def render_volume(volume: np.ndarray, out: Path, *, title: str = "", masks: dict | None = None,
                  dpi: int = 100) -> Path:
    """Write a PNG with the three mid-planes of ``volume`` (and mask contours); returns ``out``.

    >>> import tempfile
    >>> p = render_volume(np.random.default_rng(0).normal(size=(8, 9, 10)), Path(tempfile.mkdtemp()) / "v.png")
    >>> p.stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(volume, [0.5, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=dpi)
    for ax, (name, axis), plane in zip(axes, _PLANES, mid_planes(volume)):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        for mask_name, mask in (masks or {}).items():
            m = np.take(np.asarray(mask), mask.shape[axis] // 2, axis=axis)
            if m.any() and not m.all():
                ax.contour(m, levels=[0.5], colors=_MASK_COLOURS.get(mask_name, "tab:red"), linewidths=0.8)
        ax.set_title(f"{name} {plane.shape[0]}×{plane.shape[1]}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


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
    from openmind_prep.store import MASK_NAMES, case_exists, image_array

    key = _find_image(store, image)
    arr = image_array(store, f"{key}/image")
    mask_arrays = {m: image_array(store, f"{key}/{m}")[...] for m in MASK_NAMES
                   if masks and case_exists(store, f"{key}/{m}")}
    title = f"{key}  shape {tuple(arr.shape)}  {arr.dtype}"
    render_volume(arr[...], out, title=title, masks=mask_arrays)
    click.echo(f"wrote {out}")
