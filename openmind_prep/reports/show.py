"""``openmind-prep show STORE IMAGE --out x.png``: three orthogonal mid-planes of a stored volume.

Arrays are stored in on-disk voxel order (z, y, x as SimpleITK reads them), 1 mm isotropic, so
each plane is drawn with equal aspect. Masks stored with the image are drawn as contours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


_PLANES = (("axial (z mid)", 0), ("coronal (y mid)", 1), ("sagittal (x mid)", 2))
_MASK_COLOURS = {"anon_mask": "tab:orange", "anat_mask": "tab:cyan"}
_MASK_LABELS = {"anon_mask": "anon_mask: defacing mask (deface_mask.nii.gz)",
                "anat_mask": "anat_mask: foreground / anatomy (fb_mask.nii.gz)"}


def find_image_key(keys: Sequence[str], image: str) -> str:
    """The stored image that ``image`` names, out of the store's group ``keys``.

    Accepted: the key, ``<key>/image``, the CSV's ``image_path`` (``.nii`` / ``.nii.gz``), or a path
    copied from a raw tree (``RAW/OpenMind/ds.../x.nii.gz``, absolute or relative). A miss raises
    ``ValueError`` naming up to five close keys.

    >>> keys = ["ds1/sub-01/anat/sub-01_T1w", "ds1/sub-02/anat/sub-02_T1w"]
    >>> find_image_key(keys, "/data/raw/OpenMind/ds1/sub-02/anat/sub-02_T1w.nii.gz")
    'ds1/sub-02/anat/sub-02_T1w'
    >>> find_image_key(keys, "ds1/sub-03/anat/sub-03_T1w")
    Traceback (most recent call last):
    ValueError: no stored image 'ds1/sub-03/anat/sub-03_T1w'; close: ds1/sub-01/anat/sub-01_T1w, ds1/sub-02/anat/sub-02_T1w
    """
    import difflib

    from openmind_prep.sources.metadata import IMAGES_DIR
    from openmind_prep.core.paths import strip_nifti_suffix

    text = image.strip().replace("\\", "/")
    marker = f"{IMAGES_DIR}/"
    if marker in text:  # a raw-tree path: keep what follows the repo's image folder
        text = text[text.rindex(marker) + len(marker):]
    key = strip_nifti_suffix(text.strip("/"))
    key = key.removesuffix("/image")
    known = set(keys)
    if key in known:
        return key
    close = difflib.get_close_matches(key, list(known), n=5, cutoff=0.6)
    if not close:  # same file name in another folder, e.g. a wrong dataset id
        name = key.rsplit("/", 1)[-1]
        close = sorted(k for k in known if k.rsplit("/", 1)[-1] == name)[:5]
    hint = f"close: {', '.join(sorted(close))}" if close else f"{len(known)} images stored, none close"
    raise ValueError(f"no stored image {image!r}; {hint}")


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
    drawn = [name for name in (masks or {}) if np.asarray(masks[name]).any()]
    if drawn:
        from matplotlib.lines import Line2D

        fig.legend(handles=[Line2D([], [], color=_MASK_COLOURS.get(m, "tab:red"), lw=2, label=_MASK_LABELS.get(m, m))
                            for m in drawn], loc="lower center", ncol=len(drawn), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if drawn else 0, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
