"""Banded separable products on 3-D numpy volumes: one small matrix per axis, applied block by block.

A linear operator that acts on each axis independently (a spline resize, a Gaussian blur) equals
``M_z ⊗ M_y ⊗ M_x``. Each 1-D operator ``[n_out, n_in]`` has a narrow band, so it is split into row
blocks that keep only their non-zero column range (:func:`band_blocks`) and applied along one axis
at a time (:func:`separable`) in the axis order that needs the fewest multiply-adds
(:func:`axis_order`). numpy only: preprocessing runs without importing torch (its import is most of
a small job's start-up); :mod:`openmind_prep.core.separable` applies the same blocks with torch, on
any device, for the view sampler.

Each block product is one BLAS ``gemm`` written straight into its slice of the output; a float32
result agrees with torch's on the same blocks to float32 rounding (tests/test_banded.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np

Block = tuple[int, int, int, int, np.ndarray]  # (r0, r1, c0, c1, m[r0:r1, c0:c1])
Blocks = tuple[Block, ...]

ROWS = 32  # output rows per block (the view sampler's default)
#: numpy's gemm along the contiguous axis (strided output columns) runs at about half the rate of the
#: others: counting its multiply-adds twice puts it first, on the smaller array (measured on resizes of
#: the embedded volumes: 10-15 % faster than the plain flop count's order; benchmarks/NOTES.md).
LAST_AXIS_COST = 2.0


def band_blocks(m: np.ndarray, rows: int = ROWS, tol: float = 0.0, dtype: np.dtype | type = np.float32) -> Blocks:
    """Row blocks ``(r0, r1, c0, c1, m[r0:r1, c0:c1])`` of ``m`` in ``dtype`` (contiguous copies);
    a block's columns span its entries with ``|m| > tol``.

    >>> [(r0, r1, c0, c1) for r0, r1, c0, c1, _ in band_blocks(np.eye(5), rows=2)]
    [(0, 2, 0, 2), (2, 4, 2, 4), (4, 5, 4, 5)]
    """
    out = []
    nonzero = np.abs(m) > tol
    for r0 in range(0, m.shape[0], rows):
        r1 = min(r0 + rows, m.shape[0])
        cols = np.flatnonzero(nonzero[r0:r1].any(axis=0))
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
        out.append((r0, r1, c0, c1, np.ascontiguousarray(m[r0:r1, c0:c1], dtype=dtype)))
    return tuple(out)


def axis_order(shape: tuple[int, ...], blocks: Mapping[int, Blocks], last_axis_cost: float = 1.0) -> tuple[int, ...]:
    """The order of the axes in ``blocks`` that needs the fewest multiply-adds on a ``shape`` volume, those
    along the last (contiguous) axis counted ``last_axis_cost`` times.

    >>> eye = band_blocks(np.eye(4))
    >>> axis_order((4, 40, 4), {0: eye, 1: band_blocks(np.ones((2, 40)))})  # shrink the long axis first
    (1, 0)
    """
    n_out = {d: b[-1][1] for d, b in blocks.items()}
    last = len(shape) - 1

    def cost(order: tuple[int, ...]) -> float:
        size, total = list(shape), 0.0
        for d in order:
            flops = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1, _ in blocks[d]) * math.prod(size) / size[d]
            total += flops * (last_axis_cost if d == last else 1.0)
            size[d] = n_out[d]
        return total

    return min(itertools.permutations(blocks), key=cost, default=())


def apply_axis(x: np.ndarray, axis: int, blocks: Blocks) -> np.ndarray:
    """Apply one axis's banded matrix to a ``[A, B, C]`` array (a new array, ``x``'s dtype)."""
    a, b, c = x.shape
    n_out = blocks[-1][1]
    if axis == 0:
        src, out = np.ascontiguousarray(x).reshape(a, b * c), np.empty((n_out, b * c), x.dtype)
        for r0, r1, c0, c1, w in blocks:
            np.matmul(w, src[c0:c1], out=out[r0:r1])
        return out.reshape(n_out, b, c)
    if axis == 1:
        out = np.empty((a, n_out, c), x.dtype)
        for r0, r1, c0, c1, w in blocks:
            np.matmul(w, x[:, c0:c1], out=out[:, r0:r1])
        return out
    src, out = np.ascontiguousarray(x).reshape(a * b, c), np.empty((a * b, n_out), x.dtype)
    for r0, r1, c0, c1, w in blocks:
        np.matmul(src[:, c0:c1], w.T, out=out[:, r0:r1])
    return out.reshape(a, b, n_out)


def separable(x: np.ndarray, blocks: Mapping[int, Blocks]) -> np.ndarray:
    """Apply ``blocks[d]`` (from :func:`band_blocks`, in ``x``'s dtype) along axis ``d`` of ``x``
    ``[Z, Y, X]``; axes without blocks are left alone. Returns a new array (``x`` itself when
    ``blocks`` is empty).

    >>> x = np.arange(24.0).reshape(2, 3, 4)
    >>> m = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    >>> separable(x, {2: band_blocks(m, dtype=np.float64)})[1, 2].tolist()
    [20.5, 22.5]
    """
    if x.ndim != 3:
        raise ValueError(f"separable expects a [Z, Y, X] array, got shape {x.shape}")
    for d, b in blocks.items():
        if max(c1 for _, _, _, c1, _ in b) > x.shape[d]:
            raise ValueError(f"axis {d}: blocks reach column {max(c1 for _, _, _, c1, _ in b)} of size {x.shape[d]}")
    for d in axis_order(x.shape, blocks, LAST_AXIS_COST):
        x = apply_axis(x, d, blocks[d])
    return x


__all__ = ["Block", "Blocks", "LAST_AXIS_COST", "ROWS", "apply_axis", "axis_order", "band_blocks", "separable"]
