"""``openmind-prep show STORE IMAGE --out x.png``: three orthogonal mid-planes of a stored volume.

Arrays are stored in on-disk voxel order (z, y, x as SimpleITK reads them), 1 mm isotropic, so
each plane is drawn with equal aspect. Masks stored with the image are drawn as contours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
