"""A plain, slow, independent reference of REFERENCE.md §2 (onemmiso), used only by the tests.

Written the straightforward way nnU-Net v2 does it: ``binary_fill_holes`` for the nonzero mask,
skimage ``resize`` on the whole volume (or slice by slice plus ``map_coordinates`` order 0 for
the separate-z path), ``resize``-per-label for masks. No matrices, no torch.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes, map_coordinates
from skimage.transform import resize


def read(path) -> tuple[np.ndarray, tuple[float, float, float]]:
    image = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(image).astype(np.float32)
    if data.ndim == 4:
        data = data[0]
    return data, tuple(abs(s) for s in list(image.GetSpacing())[:3][::-1])


def crop(data: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    mask = binary_fill_holes(data != 0)
    where = np.where(mask)
    bbox = [[int(w.min()), int(w.max()) + 1] for w in where]
    return data[tuple(slice(a, b) for a, b in bbox)], bbox


def zscore(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    mean = data.mean()
    std = data.std()
    return (data - mean) / max(std, 1e-8)


def lowres_axis(spacing) -> int | None:
    spacing = np.array(spacing, dtype=float)
    if spacing.max() / spacing.min() <= 3:
        return None
    axes = np.where(spacing == spacing.max())[0]
    return int(axes[0]) if len(axes) == 1 else None


def _order0_along(data: np.ndarray, new_shape, axis: int) -> np.ndarray:
    grids = np.mgrid[tuple(slice(0, n) for n in new_shape)].astype(float)
    coords = [(data.shape[d] / new_shape[d]) * (grids[d] + 0.5) - 0.5 for d in range(3)]
    return map_coordinates(data, np.array(coords), order=0, mode="nearest")


def _resize_separate(data, new_shape, axis, resize_slice):
    slices = [resize_slice(np.take(data, i, axis=axis), [n for d, n in enumerate(new_shape) if d != axis])
              for i in range(data.shape[axis])]
    stacked = np.stack(slices, axis=axis)
    if stacked.shape[axis] != new_shape[axis]:
        stacked = _order0_along(stacked, new_shape, axis)
    return stacked


def resample(data: np.ndarray, new_shape, spacing) -> np.ndarray:
    if tuple(data.shape) == tuple(new_shape):
        return data
    data64 = data.astype(float)
    axis = lowres_axis(spacing)

    def cubic(x, shape):
        return resize(x, shape, order=3, mode="edge", anti_aliasing=False)

    out = cubic(data64, new_shape) if axis is None else _resize_separate(data64, new_shape, axis, cubic)
    return out.astype(np.float32)


def resample_labels(mask: np.ndarray, new_shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Returns the resampled labels and, per voxel, the largest |indicator - 0.5| seen (tie check)."""
    if tuple(mask.shape) == tuple(new_shape):
        return mask, np.ones(mask.shape)
    axis = lowres_axis(spacing)
    margin = np.full(new_shape, np.inf)

    def linear(x, shape):
        out = np.zeros(shape, dtype=x.dtype)
        for label in np.unique(x):
            hot = resize((x == label).astype(float), shape, order=1, mode="edge", anti_aliasing=False, clip=True)
            out[hot >= 0.5] = label
        return out

    if axis is None:
        out = linear(mask, new_shape)
        for label in np.unique(mask):
            hot = resize((mask == label).astype(float), new_shape, order=1, mode="edge", anti_aliasing=False)
            margin = np.minimum(margin, np.abs(hot - 0.5))
        return out, margin
    return _resize_separate(mask, new_shape, axis, linear), margin


def onemmiso(path, mask_paths=()) -> tuple[np.ndarray, list[list[int]], list[np.ndarray], list[np.ndarray]]:
    data, spacing = read(path)
    cropped, bbox = crop(data)
    normed = zscore(cropped)
    new_shape = [int(round(s / 1.0 * n)) for s, n in zip(spacing, normed.shape)]
    image = resample(normed, new_shape, spacing)
    masks, margins = [], []
    for mask_path in mask_paths:
        mask, _ = read(mask_path)
        m, margin = resample_labels(mask[tuple(slice(a, b) for a, b in bbox)].astype(np.uint8), new_shape, spacing)
        masks.append(m)
        margins.append(margin)
    return image, bbox, masks, margins
