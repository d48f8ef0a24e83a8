"""Geometry of two overlapping views: frozen value objects and the pure function that draws them.

Coordinate conventions (used everywhere in ``loaders`` and ``trainers``):

* **Axis order** is the stored order, named once: a volume is ``[C, Z, Y, X]`` (a batch
  ``[B, C, Z, Y, X]``), i.e. axis 0/1/2 of the Zarr array = z/y/x = SimpleITK's numpy order =
  NIfTI's voxel axes k/j/i reversed. Every tuple of three (shapes, boxes, zooms, flips, regions)
  is in this order. Only ``grid_sample`` grids run the other way (channel 0 = x, the last axis);
  ``box_grid`` does that reversal in one place.
* **Voxel index** coordinates: voxel ``i`` of an axis has its centre at ``i`` (NIfTI style).
  ``PairGeometry.affines`` map a view's voxel index ``(i, j, k, 1)`` (tensor axes 2, 3, 4) to a
  continuous voxel index of the source volume.
* **Normalised box** coordinates: ``u`` in [0, 1] along a view axis of ``size`` voxels covers the
  continuous position ``u * size``, so voxel ``i`` spans ``[i / size, (i + 1) / size]``. This is
  ``grid_sample(..., align_corners=False)`` with grid value ``2 * u - 1``.
* A box is ``(z1, y1, x1, z2, y2, x2)`` = start then end along axes z, y, x (batch tensor axes
  2, 3, 4). On an axis that the view mirrors, start > end, so "fraction t of the way from start to end" is the same
  anatomy in both views: sampling view 1 over box 1 and view 2 over box 2 gives the same content.

The draw is a pure function of the shapes and a ``torch.Generator`` (docs/style.md 1, 2, 7): every
random number is drawn on the CPU in a fixed order, and the result can be applied again later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class OverlapBox:
    """Where the overlap lies inside one view, normalised to [0, 1] (see the module docstring).

    >>> box = OverlapBox(start=(0.5, 0.0, 1.0), end=(1.0, 0.25, 0.5))
    >>> box.flipped
    (False, False, True)
    >>> box.to_slices((16, 20, 24))
    (slice(8, 16, None), slice(0, 5, None), slice(12, 24, None))
    """

    start: tuple[float, float, float]
    end: tuple[float, float, float]

    @property
    def flipped(self) -> tuple[bool, bool, bool]:
        """Per axis: is the view mirrored relative to the other view's orientation (start > end)."""
        return tuple(s > e for s, e in zip(self.start, self.end))  # type: ignore[return-value]

    def to_slices(self, size: Shape3, tol: float = 1e-6) -> tuple[slice, slice, slice]:
        """Voxel slices covering the box in a view of ``size``; only for voxel-aligned boxes.

        Raises ``ValueError`` when a box edge falls between voxels (a zoomed view).
        """
        out = []
        for s, e, n in zip(self.start, self.end, size):
            lo, hi = min(s, e) * n, max(s, e) * n
            if abs(lo - round(lo)) > tol or abs(hi - round(hi)) > tol:
                raise ValueError(f"box {self} is not voxel-aligned in a view of size {size}")
            out.append(slice(round(lo), round(hi)))
        return tuple(out)  # type: ignore[return-value]


def box_grid(boxes: Tensor, size: Shape3) -> Tensor:
    """``grid_sample`` grid (``align_corners=False``) that resamples each view over its box.

    ``boxes`` is ``[N, 6]``; the result is ``[N, *size, 3]`` with the last dimension in
    ``grid_sample``'s (x, y, z) = (last, middle, first axis) order. Output voxel ``i`` samples
    fraction ``(i + 0.5) / size`` of the way from box start to box end.

    >>> g = box_grid(torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]), (2, 3, 4))
    >>> tuple(g.shape), [round(v, 4) for v in g[0, 1, 2, 3].tolist()]  # identity box: voxel centres
    ((1, 2, 3, 4, 3), [0.75, 0.6667, 0.5])
    """
    n = boxes.shape[0]
    axes = []
    for d, m in enumerate(size):
        t = (torch.arange(m, device=boxes.device, dtype=boxes.dtype) + 0.5) / m
        u = boxes[:, d, None] + t[None] * (boxes[:, d + 3, None] - boxes[:, d, None])
        axes.append(2 * u - 1)
    g_z = axes[0][:, :, None, None].expand(n, *size)
    g_y = axes[1][:, None, :, None].expand(n, *size)
    g_x = axes[2][:, None, None, :].expand(n, *size)
    return torch.stack([g_x, g_y, g_z], dim=-1)  # grid_sample's channel order: last axis first


@dataclass(frozen=True, eq=False)
class PairGeometry:
    """Drawn geometry of two views per volume; apply it with ``OverlapViewSampler.apply``.

    Rows ``0..B-1`` are view 1 of each volume, rows ``B..2B-1`` view 2.

    Fields: ``patch_size``; ``source_shapes`` (spatial shape of each volume); ``affines``
    ``[2B, 4, 4]`` float64, view voxel index -> source voxel index; ``boxes`` ``[2B, 6]`` float64;
    ``overlaps`` ``[B]``: overlap volume / volume of the smaller (more zoomed-in) view, exact;
    ``zooms`` ``[2B]`` (source voxels per view voxel), ``flips`` ``[2B, 3]`` bool,
    ``rotations`` ``[B, 3, 3]`` (shared by both views of a volume).
    """

    patch_size: Shape3
    source_shapes: tuple[Shape3, ...]
    affines: Tensor
    boxes: Tensor
    overlaps: Tensor
    zooms: Tensor
    flips: Tensor
    rotations: Tensor

    @property
    def batch_size(self) -> int:
        """Number of volumes ``B`` (there are ``2B`` views)."""
        return len(self.source_shapes)

    def box(self, view: int) -> OverlapBox:
        """The overlap box of view row ``view`` as a value object."""
        b = self.boxes[view].tolist()
        return OverlapBox(start=tuple(b[:3]), end=tuple(b[3:]))  # type: ignore[arg-type]

    def is_axis_aligned(self, view: int) -> bool:
        """True when view row ``view`` is mirror + zoom + shift of its source (no rotation)."""
        lin = self.affines[view, :3, :3]
        return bool(torch.count_nonzero(lin - torch.diag(torch.diagonal(lin))) == 0)

    def is_crop(self, view: int) -> bool:
        """True when view row ``view`` is an exact voxel crop (maybe mirrored) of its source."""
        a = self.affines[view]
        lin = a[:3, :3]
        return bool(
            torch.equal(lin.abs(), torch.eye(3, dtype=a.dtype))
            and torch.equal(a[:3, 3], a[:3, 3].round())
        )


def _fresh_generator() -> torch.Generator:
    """A CPU generator seeded from the OS (the global torch RNG is left alone)."""
    gen = torch.Generator()
    gen.seed()
    return gen


def _rotation(angles: Tensor) -> Tensor:
    """``[B, 3]`` angles (radians, about axes 0, 1, 2) -> ``[B, 3, 3]`` rotations R0 @ R1 @ R2."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    r0 = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    r1 = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    r2 = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return r0 @ r1 @ r2


def _repair_overlap(o: list[int], cap: list[int], lmin: list[float], lo: float, hi: float) -> list[int]:
    """Nudge whole-voxel overlaps ``o`` (per axis, ``1 <= o <= cap``) until prod(o/lmin) is in [lo, hi]."""
    denom = math.prod(lmin)
    for _ in range(4 * sum(cap)):
        frac = math.prod(o) / denom
        if frac < lo:
            grow = [d for d in range(3) if o[d] < cap[d] and math.prod(o) / o[d] * (o[d] + 1) / denom <= hi]
            if not grow:
                break
            d = min(grow, key=lambda d: 1 / o[d])
            o[d] += 1
        elif frac > hi:
            shrink = [d for d in range(3) if o[d] > 1 and math.prod(o) / o[d] * (o[d] - 1) / denom >= lo]
            if not shrink:
                break
            d = min(shrink, key=lambda d: 1 / o[d])
            o[d] -= 1
        else:
            break
    return o


def split_range(u_side: Tensor, u: Tensor, lo: float, hi: float) -> Tensor:
    """batchgenerators' draw of a factor in ``[lo, hi]``: half the time below 1, half above (when
    the range straddles 1), from uniforms ``u_side`` and ``u``.

    >>> split_range(torch.tensor([0.2, 0.8]), torch.tensor([0.5, 0.5]), 0.5, 2.0).tolist()
    [0.75, 1.5]
    """
    below = lo + (min(1.0, hi) - lo) * u
    above = max(lo, 1.0) + (hi - max(lo, 1.0)) * u
    return torch.where((u_side < 0.5) & (lo < 1), below, above)


def draw_pair_geometry(
    source_shapes: list[Shape3] | tuple[Shape3, ...],
    patch_size: Shape3,
    *,
    min_overlap: float = 0.4,
    max_overlap: float = 0.8,
    flip: bool = True,
    scale_range: tuple[float, float] | None = (0.7, 1.4),
    p_scale: float = 0.2,
    max_rotation: float | None = math.pi / 6,
    p_rotate: float = 0.2,
    shared: bool = False,
    generator: torch.Generator | None = None,
) -> PairGeometry:
    """Draw two overlapping views per volume (pure function of the shapes and ``generator``).

    Per volume: an overlap fraction uniform in [min_overlap, max_overlap] split over the axes
    with Dirichlet(1, 1, 1) weights on its log; per axis a random direction in which view 2 is
    displaced; per view a mirror per axis (p=0.5), a zoom (p=p_scale, uniform below or above 1
    with equal chance, as batchgenerators); a rotation of the pair's parent region (p=p_rotate,
    angles uniform in +-max_rotation about each axis). When neither view is zoomed, the
    overlap is a whole number of voxels per axis (nudged so the fraction stays in range), so both
    views are exact voxel crops.
    The pair is placed uniformly where it fits; where it does not, it is centred (then padded).
    ``shared=True`` is the reference fork's recipe: view 1's mirror and zoom are used for both views
    (a transform of the pair's region before cropping, like the shared rotation), so the two views
    differ by translation only; the random numbers drawn are the same either way.

    >>> g = draw_pair_geometry([(40, 40, 40)], (16, 20, 24), generator=torch.Generator().manual_seed(0))
    >>> tuple(g.boxes.shape), 0.4 <= float(g.overlaps[0]) <= 0.8
    ((2, 6), True)
    """
    if not 0 < min_overlap <= max_overlap <= 1:
        raise ValueError(f"need 0 < min_overlap <= max_overlap <= 1, got {min_overlap}, {max_overlap}")
    if min(patch_size) < 2:
        raise ValueError(f"patch_size must be at least 2 per axis, got {patch_size}")
    g = generator if generator is not None else _fresh_generator()
    n = len(source_shapes)
    f64 = torch.float64

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g, dtype=f64)

    # All random numbers first, in a fixed order, so the stream does not depend on the options.
    u_frac, u_dir, u_w = rand(n), rand(n, 3), rand(n, 3)
    u_flip, u_pscale, u_side, u_scale = rand(2, n, 3), rand(2, n), rand(2, n), rand(2, n)
    u_prot, u_angle, u_place = rand(n), rand(n, 3), rand(n, 3)

    p = torch.tensor(patch_size, dtype=f64)
    frac = min_overlap + (max_overlap - min_overlap) * u_frac
    w = -torch.log1p(-u_w)  # Exp(1) draws -> Dirichlet(1, 1, 1) after normalising
    w = w / w.sum(1, keepdim=True)
    axis_frac = frac[:, None] ** w

    zoom = torch.ones(2, n, dtype=f64)
    if scale_range is not None:
        lo, hi = scale_range
        drawn = split_range(u_side, u_scale, lo, hi)
        zoom = torch.where(u_pscale < p_scale, drawn, zoom)
    flips = (u_flip < 0.5) & flip
    if shared:  # one mirror and one zoom per pair
        zoom, flips = zoom[:1].expand(2, n).clone(), flips[:1].expand(2, n, 3).clone()
    angles = (2 * u_angle - 1) * (max_rotation or 0.0)
    angles = torch.where((u_prot < p_rotate)[:, None], angles, torch.zeros_like(angles))
    rot = _rotation(angles)
    rot = torch.where((angles == 0).all(1)[:, None, None], torch.eye(3, dtype=f64), rot)
    sign = torch.where(u_dir < 0.5, 1.0, -1.0).to(f64)

    lmin = zoom.min(0).values[:, None] * p  # [n, 3] extent of the smaller view, source voxels
    overlap = axis_frac * lmin  # exact; zoomed views are interpolated anyway
    for b in torch.nonzero((zoom == 1).all(0)).flatten().tolist():  # unzoomed: whole voxels, exact crops
        cap = [int(x) for x in patch_size]
        o = [min(c, max(1, round(t))) for t, c in zip(overlap[b].tolist(), cap)]
        overlap[b] = torch.tensor(_repair_overlap(o, cap, lmin[b].tolist(), min_overlap, max_overlap), dtype=f64)

    ext1, ext2 = zoom[0][:, None] * p, zoom[1][:, None] * p  # [n, 3]
    low1 = torch.where(sign > 0, torch.zeros_like(ext1), ext2 - overlap)  # view corners, union frame
    low2 = torch.where(sign > 0, ext1 - overlap, torch.zeros_like(ext1))
    ov0 = torch.maximum(low1, low2)
    union = ext1 + ext2 - overlap

    size = torch.tensor(source_shapes, dtype=f64).reshape(n, 3)
    half = (rot.abs() @ (union / 2)[..., None])[..., 0]  # half extent of the rotated union
    k_lo, k_hi = torch.ceil(half - union / 2 - 1e-9), torch.floor(size - half - union / 2 + 1e-9)
    fits = k_lo <= k_hi
    k = torch.where(fits, k_lo + torch.floor(u_place * (k_hi - k_lo + 1)).clamp(max=k_hi - k_lo),
                    torch.floor((size - union) / 2))
    centre = k + union / 2  # union centre, continuous source position (voxel i spans [i, i+1])

    views = ((zoom[0], low1, flips[0]), (zoom[1], low2, flips[1]))
    # union position of each view's voxel 0, and its source index relative to the union centre
    firsts = [low + torch.where(fl, zv[:, None] * (p - 0.5), zv[:, None] * 0.5) for zv, low, fl in views]
    rel = [-0.5 + (rot @ (first - union / 2)[..., None])[..., 0] for first in firsts]
    # Unrotated pairs: move the pair by < 1 voxel so an unzoomed view lands on whole voxels (an exact crop).
    plain = (rot == torch.eye(3, dtype=f64)).flatten(1).all(1)[:, None]
    whole = [plain & (zv == 1)[:, None] for zv, _, _ in views]
    target = torch.where(whole[0], centre + rel[0], centre + rel[1])
    centre = torch.where(whole[0] | whole[1], centre + target.round() - target, centre)

    affines, boxes = [], []
    for (zv, low, fl), r, w in zip(views, rel, whole):
        step = torch.where(fl, -zv[:, None], zv[:, None]).expand(n, 3)
        a = torch.zeros(n, 4, 4, dtype=f64)
        a[:, :3, :3] = rot * step[:, None, :]
        a[:, :3, 3] = torch.where(w, (centre + r).round(), centre + r)  # drop float dust on crops
        a[:, 3, 3] = 1
        start, end = (ov0 - low) / (zv[:, None] * p), (ov0 + overlap - low) / (zv[:, None] * p)
        start, end = torch.where(fl, 1 - start, start), torch.where(fl, 1 - end, end)
        affines.append(a)
        boxes.append(torch.cat([start, end], 1))
    return PairGeometry(
        patch_size=tuple(int(x) for x in patch_size),  # type: ignore[arg-type]
        source_shapes=tuple(tuple(int(x) for x in s) for s in source_shapes),  # type: ignore[misc]
        affines=torch.cat(affines),
        boxes=torch.cat(boxes),
        overlaps=(overlap / lmin).prod(1),
        zooms=zoom.reshape(2 * n),
        flips=flips.reshape(2 * n, 3),
        rotations=rot,
    )
