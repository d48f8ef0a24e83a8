"""Where a stored voxel lies in the scanner: the 4×4 affine of a preprocessed volume (or a region of it).

Axis order. A stored array is ``[z, y, x]`` = axis 0, 1, 2, the order SimpleITK's
``GetArrayFromImage`` gives: axis 2 (x) is NIfTI's ``i`` (fastest on disk), axis 1 is ``j``,
axis 0 is ``k``. The affines here use the NIfTI / nibabel convention: they map a voxel index to
**RAS+** millimetres (x grows to the Right, y to the Anterior, z to the Superior), whatever the
voxel order on disk. SimpleITK reports origin and direction in LPS+ (``origin`` is the physical
(x, y, z) of the original voxel ``i = j = k = 0``); RAS = diag(-1, -1, 1) · LPS.

Geometry of the onemmiso grid (:mod:`openmind_prep.preprocess.resample`). Along stored axis ``d`` the crop
keeps original voxels ``[lo_d, hi_d)`` (``crop_bbox``) and the resize maps ``n_in = hi - lo`` voxels
to ``n_out`` (the stored shape) with skimage's grid mode: stored voxel ``o`` samples original index
``lo + (o + 0.5) · n_in / n_out - 0.5``. Its spacing is therefore ``spacing · n_in / n_out`` —
1 mm up to the rounding of the new shape (``round(spacing · n_in)`` voxels) — and direction and
origin follow from the original image's. (The separate-z rule takes the nearest original slice
along its low-resolution axis, but the stored voxel's position is the same.)

>>> row = {"spacing": [2.0, 1.0, 1.0], "shape": [20, 10, 10], "crop_bbox": [[0, 10], [0, 10], [0, 10]],
...        "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
>>> (stored_affine(row).round(3) + 0.0).tolist()   # columns: stored axes z, y, x; rows: R, A, S (+ 0.0: no -0.0)
[[0.0, 0.0, -1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, -0.5], [0.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

#: LPS (SimpleITK / DICOM) -> RAS (NIfTI / nibabel / TorchIO / MONAI) world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def stored_affine(row: Mapping, start: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """The 4×4 RAS affine of a stored volume's voxels, indexed in the stored order (z, y, x).

    ``row``: a manifest row (or a sample's ``meta``) with ``spacing`` (original, zyx), ``shape``
    (stored, zyx), ``crop_bbox`` (zyx), ``origin`` and ``direction`` (SimpleITK's, LPS, x-y-z).
    ``start``: the first stored voxel of a region (``meta["region"]`` starts), so the affine is
    that of the region's own index. For NIfTI's (i, j, k) order use :func:`ijk_affine`.

    >>> row = {"spacing": [1.0, 1.0, 1.0], "shape": [4, 4, 4], "crop_bbox": [[2, 6], [0, 4], [0, 4]],
    ...        "origin": [10.0, 20.0, 30.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    >>> (stored_affine(row) @ [0, 0, 0, 1]).tolist()     # crop start: k = 2 -> z = 30 + 2
    [-10.0, -20.0, 32.0, 1.0]
    """
    missing = [k for k in ("origin", "direction", "spacing", "shape", "crop_bbox") if not row.get(k)]
    if missing:
        raise ValueError(f"{row.get('image_path', 'this row')}: no {'/'.join(missing)} in the manifest "
                         "(a store written before they were recorded: re-run preprocess into a new store)")
    spacing_zyx = np.asarray(row["spacing"], float)
    crop = np.asarray(row["crop_bbox"], float)
    n_out = np.asarray(row["shape"], float)
    ratio = (crop[:, 1] - crop[:, 0]) / n_out                       # original voxels per stored voxel
    offset = crop[:, 0] + (np.asarray(start, float) + 0.5) * ratio - 0.5
    # stored (z, y, x) index -> original (z, y, x) index -> original (i, j, k) = reversed -> LPS -> RAS
    to_ijk = np.eye(3)[::-1]
    direction = np.asarray(row["direction"], float).reshape(3, 3)
    world = LPS_TO_RAS @ direction @ np.diag(spacing_zyx[::-1]) @ to_ijk
    affine = np.eye(4)
    affine[:3, :3] = world @ np.diag(ratio)
    affine[:3, 3] = world @ offset + LPS_TO_RAS @ np.asarray(row["origin"], float)
    return affine


def ijk_affine(affine_zyx: np.ndarray) -> np.ndarray:
    """The same affine for voxels indexed (i, j, k) = (x, y, z), i.e. for ``tensor.permute(0, 3, 2, 1)``
    of a ``[C, z, y, x]`` tensor: the NIfTI order that TorchIO and MONAI expect.

    >>> ijk_affine(np.diag([1.0, 2.0, 3.0, 1.0]))[:3, :3].tolist()  # the z, y, x columns, reversed
    [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    """
    return np.asarray(affine_zyx)[:, [2, 1, 0, 3]]


def spacing_origin_direction(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing per column, origin, direction with unit columns) of a 4×4 affine, in its own world.

    >>> s, o, d = spacing_origin_direction(np.diag([-2.0, 1.0, 1.0, 1.0]))
    >>> s.tolist(), o.tolist(), d[0].tolist()
    ([2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0])
    """
    linear = np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return spacing, np.asarray(affine, float)[:3, 3].copy(), linear / spacing
