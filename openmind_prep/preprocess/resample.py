"""Fast resampling with nnU-Net v2's semantics, as separable per-axis matrix products.

nnU-Net v2 resamples an image with ``resample_data_or_seg_to_shape(..., is_seg=False, order=3,
order_z=0, force_separate_z=None)``: skimage ``resize`` (cubic B-spline, ``grid_mode``, edge mode,
no anti-aliasing, output clipped to the input's range), or, for anisotropic volumes, a per-slice
in-plane resize followed by nearest-neighbour along the low-resolution axis ("separate z").
Masks take the same route with order 1 per label as nnssl's nnU-Net did (label ``c`` wherever the
resampled indicator of ``c`` is >= 0.5, in ascending label order: :func:`resample_mask`). Label maps
(segmentations) follow today's nnU-Net v2 (batchgenerators >= 0.25.5 ``resize_segmentation``): the
label with the largest resampled indicator, exact ties to the nearest neighbour's label
(:func:`resample_labels`).

A spline resize of a regular grid is linear and separable: it equals ``M_z ⊗ M_y ⊗ M_x`` with one
small ``n_out × n_in`` matrix per axis. We build each matrix exactly, by pushing the identity's
columns through scipy's 1-D ``zoom`` with the arguments skimage uses, and apply the matrices as
block-banded float32 matrix products (:mod:`openmind_prep.core.banded`, numpy's BLAS; entries below
``_TOL`` are outside the band). No torch: a preprocessing worker never imports it.
Coordinates: output voxel ``i`` samples input position ``(i + 0.5) * n_in / n_out - 0.5``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from openmind_prep.core import banded

ANISO_THRESHOLD = 3.0  # nnU-Net's separate-z threshold on max(spacing) / min(spacing)
_TOL = 1e-10  # matrix entries below this (relative to 1) are treated as zero
#: output rows per block of the block-banded product, by spline order (order 1's band is 2 wide, so its
#: blocks are cheaper short: 16 rows measured 19 % faster than 48 on the e2e masks; order 3: 48)
_BLOCK = {1: 16, 3: 48}

__all__ = ["ANISO_THRESHOLD", "axis_matrix", "nearest_indices", "separate_z_axis",
           "resample_image", "resample_mask", "resample_labels", "LABEL_DTYPES"]


@functools.lru_cache(maxsize=1024)
def axis_matrix(n_in: int, n_out: int, order: int = 3) -> np.ndarray:
    """The exact 1-D resize operator of skimage ``resize(mode='edge', anti_aliasing=False)``.

    Returns a read-only float64 ``(n_out, n_in)`` matrix ``M`` with ``resize(x) == M @ x``
    (before clipping) for any 1-D signal ``x``; column ``j`` is the resized unit vector ``e_j``.
    All columns come from ONE scipy ``zoom`` of the identity along its first axis (zoom 1 along
    the second axis samples the spline at its knots, which returns the input to ~1e-16), 3-5x
    faster than one call per column; cached per worker process, so a shape pair is built once.

    >>> m = axis_matrix(4, 8)
    >>> m.shape, bool(np.allclose(m.sum(axis=1), 1.0))
    ((8, 4), True)
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis lengths must be positive, got {n_in} -> {n_out}")
    m = ndi.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=order, mode="nearest", grid_mode=True)
    if m.shape != (n_out, n_in):  # scipy derives the length by rounding n_in * zoom
        raise AssertionError(f"zoom gave {m.shape} for {n_in} -> {n_out}")
    m.setflags(write=False)
    return m


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output slice for nnU-Net's order-0 resampling along the low-res axis.

    nnU-Net maps output ``i`` to ``c = n_in / n_out * (i + 0.5) - 0.5`` and scipy's order-0
    ``map_coordinates(mode='nearest')`` takes ``floor(c + 0.5)`` clamped to ``[0, n_in - 1]``.

    >>> nearest_indices(10, 20)[:6].tolist()
    [0, 0, 1, 1, 2, 2]
    """
    scale = float(n_in) / n_out
    coords = scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    return np.clip(np.floor(coords + 0.5), 0, n_in - 1).astype(np.int64)


def separate_z_axis(spacing: Sequence[float], new_spacing: Sequence[float],
                    threshold: float = ANISO_THRESHOLD) -> int | None:
    """The low-resolution axis nnU-Net resamples separately (order 0), or ``None``.

    Decided on the current spacing first, then on the target spacing: anisotropy
    ``max/min > threshold`` and exactly one axis with the maximal spacing.

    >>> separate_z_axis((53.1, 2.0, 2.0), (1.0, 1.0, 1.0)), separate_z_axis((4.0, 4.0, 1.0), (1, 1, 1))
    (0, None)
    """
    for sp in (spacing, new_spacing):
        sp = np.asarray(sp, dtype=np.float64)
        if np.max(sp) / np.min(sp) > threshold:
            axes = np.flatnonzero(np.max(sp) / sp == 1)
            return int(axes[0]) if len(axes) == 1 else None
    return None


@functools.lru_cache(maxsize=1024)
def _blocks(n_in: int, n_out: int, order: int, dtype: str = "float32") -> banded.Blocks:
    """Row blocks of ``axis_matrix`` (in ``dtype``) with the column range that holds their non-negligible entries."""
    return banded.band_blocks(axis_matrix(n_in, n_out, order), rows=_BLOCK.get(order, 48), tol=_TOL, dtype=dtype)


def _resize(x: np.ndarray, new_shape: Sequence[int], axes: Sequence[int], order: int) -> np.ndarray:
    """Resize ``x`` along ``axes`` (others untouched) with the cached banded matrices
    (:func:`openmind_prep.core.banded.separable` picks the axis order that needs the fewest flops)."""
    return banded.separable(np.ascontiguousarray(x), {
        d: _blocks(x.shape[d], int(new_shape[d]), order, x.dtype.name)
        for d in axes if x.shape[d] != new_shape[d]})


def _plan(spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int | None, list[int]]:
    z = separate_z_axis(spacing, new_spacing)
    return z, [ax for ax in range(3) if ax != z]


def resample_image(data: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                   new_spacing: Sequence[float]) -> np.ndarray:
    """Resample a 3-D float32 volume as nnU-Net v2 does for image data (order 3, order_z 0).

    ``spacing`` and ``new_spacing`` decide the separate-z path; an unchanged shape returns
    ``data`` itself. Threads: numpy's BLAS (Dask workers set ``OPENBLAS_NUM_THREADS=1``).

    >>> out = resample_image(np.random.default_rng(0).random((5, 6, 7), dtype=np.float32),
    ...                      (10, 6, 7), (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    >>> out.shape, out.dtype
    ((10, 6, 7), dtype('float32'))
    """
    new_shape = tuple(int(n) for n in new_shape)
    if data.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"expected a 3-D volume and a 3-D shape, got {data.shape} -> {new_shape}")
    if tuple(data.shape) == new_shape:
        return data
    x = np.ascontiguousarray(data, dtype=np.float32)
    z, in_plane = _plan(spacing, new_spacing)
    y = _resize(x, new_shape, in_plane, order=3)
    if z is None:
        return np.clip(y, x.min(), x.max(), out=y)
    if y is not x:  # separate z: every resized in-plane slice is clipped to its own range, then order 0 along z
        other = tuple(ax for ax in range(3) if ax != z)
        np.clip(y, x.min(axis=other, keepdims=True), x.max(axis=other, keepdims=True), out=y)  # in place
    if data.shape[z] != new_shape[z]:
        y = np.take(y, nearest_indices(data.shape[z], new_shape[z]), axis=z)
    return np.ascontiguousarray(y)


def resample_mask(mask: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                  new_spacing: Sequence[float]) -> np.ndarray:
    """Resample a uint8 label volume as nnU-Net v2 does for segmentations (order 1 per label).

    Each label ``c > 0`` (ascending, later labels win) is set where the order-1 resampled
    indicator ``mask == c`` is >= 0.5; with a unique low-res axis (separate z) in-plane first,
    then nearest-neighbour along that axis.

    >>> m = np.zeros((4, 4, 4), np.uint8); m[1:3, 1:3, 1:3] = 1
    >>> int(resample_mask(m, (8, 8, 8), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0)).sum())  # corners: 0.75**3 < 0.5
    56
    """
    new_shape = tuple(int(n) for n in new_shape)
    if mask.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"expected a 3-D mask and a 3-D shape, got {mask.shape} -> {new_shape}")
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8, got {mask.dtype}")
    if tuple(mask.shape) == new_shape:
        return mask
    z, in_plane = _plan(spacing, new_spacing)
    mid_shape = tuple(mask.shape[ax] if ax == z else new_shape[ax] for ax in range(3))
    src = np.ascontiguousarray(mask)
    counts = np.bincount(src.reshape(-1), minlength=256)  # labels present, without np.unique's sort
    labels = (np.flatnonzero(counts[1:]) + 1).tolist()  # 0: the output's initial value
    out = None
    for label in labels:
        # a 0/1 mask is its own indicator: one cast instead of a comparison and a cast
        hot = src.astype(np.float32) if labels == [1] else (src == label).astype(np.float32)
        keep = _resize(hot, new_shape, in_plane, order=1) >= 0.5
        if out is None:  # the first label: the bool result is the uint8 0/1 output, no zero fill
            out = keep.view(np.uint8)
            if label != 1:
                out *= np.uint8(label)
        else:
            out[keep] = label
    if out is None:
        out = np.zeros(mid_shape, dtype=np.uint8)
    if z is not None and mask.shape[z] != new_shape[z]:
        out = np.take(out, nearest_indices(mask.shape[z], new_shape[z]), axis=z)
    return np.ascontiguousarray(out)


#: Label dtypes :func:`resample_labels` takes.
LABEL_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64)
#: Scores this close are a tie (nnU-Net compares float64 sums for equality; ours are summed in
#: another order, so an exact tie there may differ here by a few ulp).
TIE = 1e-9


def resample_labels(labels: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                    new_spacing: Sequence[float]) -> np.ndarray:
    """Resample a label map as nnU-Net v2 resamples segmentations (``is_seg=True``, order 1, order_z 0;
    batchgenerators' ``resize_segmentation`` with ``seg_tiebreak='nearest'``); the dtype is kept.

    Every label's indicator is resampled linearly in float64; each voxel takes the label with the largest
    value. Where the largest is shared (within :data:`TIE`: a point midway between two labels), the
    nearest neighbour's label wins if it is among the tied ones, else the smallest of them. With a
    unique low-res axis (separate z) in-plane first, then nearest-neighbour along that axis.

    >>> m = np.zeros((4, 4, 4), np.int16); m[1:3, 1:3, 1:3] = 300
    >>> out = resample_labels(m, (8, 8, 8), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))
    >>> out.dtype, int((out == 300).sum())  # corners: 0.75**3 of 300 against 0.58 of 0
    (dtype('int16'), 56)
    >>> resample_labels(np.array([[[0, 0, 1, 1, 2, 2]]], np.uint8), (1, 1, 3), (1, 1, 1), (1, 1, 2)).tolist()
    [[[0, 1, 2]]]
    """
    new_shape = tuple(int(n) for n in new_shape)
    if labels.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"expected a 3-D label map and a 3-D shape, got {labels.shape} -> {new_shape}")
    if labels.dtype not in LABEL_DTYPES:
        raise ValueError(f"labels must be integers ({', '.join(np.dtype(d).name for d in LABEL_DTYPES)}), "
                         f"got {labels.dtype}")
    if tuple(labels.shape) == new_shape:
        return labels
    z, in_plane = _plan(spacing, new_spacing)
    src = np.ascontiguousarray(labels)
    values = np.unique(src)  # sorted: ties without the nearest label go to the smallest
    near = src  # the nearest neighbour (order 0) on the in-plane grid, as an index into values
    for ax in in_plane:
        if src.shape[ax] != new_shape[ax]:
            near = np.take(near, nearest_indices(src.shape[ax], new_shape[ax]), axis=ax)
    near = np.searchsorted(values, near)
    win = np.zeros_like(near)
    best = nn_top = None
    for i, value in enumerate(values.tolist()):
        score = _resize((src == value).astype(np.float64), new_shape, in_plane, order=1)
        is_nn = near == i
        if best is None:  # the first label leads everywhere until another beats it
            best, nn_top = score, is_nn & (score > 0)
            continue
        nn_top |= is_nn & (np.abs(score - best) <= TIE) & (score > 0)  # the nearest label draws level
        better = score > best + TIE
        nn_top = np.where(better, is_nn, nn_top)  # a new leader: the nearest label leads iff it is it
        win[better] = i
        best = np.maximum(best, score)
    out = values[np.where(nn_top, near, win)] if nn_top is not None else values[near]
    if z is not None and labels.shape[z] != new_shape[z]:
        out = np.take(out, nearest_indices(labels.shape[z], new_shape[z]), axis=z)
    return np.ascontiguousarray(out)
