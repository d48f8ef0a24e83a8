"""CVA losses as plain functions: RoI-align of feature volumes over overlap boxes and the loss terms.

Batch layout everywhere (the sampler's): rows ``0..B-1`` are view 1 of every volume, rows ``B..2B-1``
view 2 of the same volumes in the same order, so row ``i`` and row ``(i + B) % 2B`` see one volume.

Box convention (``loaders.OverlapViewSampler``): ``(z1, y1, x1, z2, y2, x2)`` normalised to [0, 1]
along tensor axes 2, 3, 4 of a view; coordinate ``u`` is the continuous position ``u * size``
(voxel ``i`` spans ``[i, i + 1)``, its centre is ``i + 0.5``); a flipped axis has start > end, so the
``k``-th aligned voxel of view 1 and of view 2 show the same anatomy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loaders.geometry import box_grid

__all__ = [
    "align_views",
    "swap_views",
    "masked_huber",
    "masked_mse",
    "aligned_cosine",
    "nt_xent",
    "contrastive_vectors",
    "contrastive_voxels",
    "gram_consistency",
]


def align_views(features: torch.Tensor, boxes: torch.Tensor, out_size: int, samples_per_bin: int = 2) -> torch.Tensor:
    """Trilinear RoI-align: resample each feature volume over its box onto an ``out_size``³ grid.

    Output voxel ``(i, j, k)`` is the mean of ``samples_per_bin``³ trilinear samples spread evenly over
    bin ``(i, j, k)`` of the box. ``grid_sample`` reads ``grid[..., 0]`` as the LAST tensor axis, so
    the box's z component (axis 4) goes to grid channel 0 and x (axis 2) to channel 2; the grid
    comes from ``loaders.geometry.box_grid``, the sampler's own mapping.

    Args:
        features: ``[N, C, Z, Y, X]``.
        boxes: ``[N, 6]`` in the convention of the module docstring.
        out_size: edge length ``o`` of the aligned grid.
        samples_per_bin: sub-samples per bin and axis (RoI-align's sampling ratio).

    Returns:
        ``[N, C, o, o, o]``.

    >>> f = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2)
    >>> align_views(f, torch.tensor([[0.0, 0, 0, 1, 1, 1]]), 2, 1)[0, 0, :, 0, 0].tolist()
    [0.5, 2.5]
    >>> align_views(f, torch.tensor([[1.0, 0, 0, 0, 1, 1]]), 2, 1)[0, 0, :, 0, 0].tolist()  # flipped x
    [2.5, 0.5]
    """
    if features.ndim != 5 or boxes.shape != (features.shape[0], 6):
        raise ValueError(f"align_views wants features [N,C,Z,Y,X] and boxes [N,6], got {tuple(features.shape)} and {tuple(boxes.shape)}")
    s = out_size * samples_per_bin
    dtype = torch.promote_types(features.dtype, torch.float32)
    grid = box_grid(boxes.to(dtype), (s, s, s)).to(features.dtype)  # the sampler's own box → grid mapping
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool3d(out, samples_per_bin) if samples_per_bin > 1 else out


def swap_views(x: torch.Tensor) -> torch.Tensor:
    """Exchange the view-1 and view-2 halves of a ``[2B, ...]`` batch.

    >>> swap_views(torch.tensor([1, 2, 3, 4])).tolist()
    [3, 4, 1, 2]
    """
    if x.shape[0] % 2:
        raise ValueError(f"expected an even batch (view 1 of all, then view 2 of all), got {x.shape[0]}")
    return x.roll(x.shape[0] // 2, dims=0)


def masked_huber(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor | None = None, delta: float = 1.0) -> torch.Tensor:
    """Huber loss averaged over the hidden voxels (MAE), or over all voxels when ``masked`` is None (AE).

    ``masked`` is a boolean tensor broadcastable to ``pred``, True where the student's input was hidden.

    >>> p, t = torch.zeros(1, 1, 2, 1, 1), torch.tensor([0.0, 3.0]).view(1, 1, 2, 1, 1)
    >>> masked_huber(p, t, torch.tensor([False, True]).view(1, 1, 2, 1, 1)).item()
    2.5
    """
    return _hidden_mean(F.huber_loss(pred.float(), target.float(), reduction="none", delta=delta), masked)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error averaged over the hidden voxels (nnssl's ``MAEMSELoss``), or over all voxels (AE).

    >>> p, t = torch.zeros(1, 1, 2, 1, 1), torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1)
    >>> masked_mse(p, t, torch.tensor([False, True]).view(1, 1, 2, 1, 1)).item()
    9.0
    """
    return _hidden_mean((pred.float() - target.float()) ** 2, masked)


def _hidden_mean(loss: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    if masked is None:
        return loss.mean()
    w = masked.to(loss.dtype).expand_as(loss)
    return (loss * w).sum() / w.sum().clamp_min(1.0)


def aligned_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos`` between each aligned student voxel and the teacher's voxel of the OTHER view, symmetrised.

    Averaging over all ``2B`` rows gives ½ (student view 1 vs teacher view 2) + ½ (student view 2 vs
    teacher view 1). Inputs ``[2B, C, o, o, o]`` (or ``[2B, C]``); the teacher is detached.

    >>> x = torch.randn(4, 8, 3, 3, 3)
    >>> round(aligned_cosine(x, swap_views(x)).item(), 6)
    0.0
    """
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(swap_views(teacher.detach()).float(), dim=1)
    return 2.0 - 2.0 * (s * t).sum(dim=1).mean()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.5, groups: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent over the ``2N`` rows of ``cat(a, b)``; row ``a[i]``'s positive is ``b[i]`` and vice versa.

    Every other row is a negative, except rows with the same ``groups`` id (other representations of
    the same volume), which are left out of the denominator. Cosine similarity divided by ``temperature``.

    Args:
        a, b: ``[N, D]``.
        groups: ``[N]`` integer ids shared by ``a[i]`` and ``b[i]``; None = every pair its own group.

    >>> x = torch.eye(3)
    >>> round(nt_xent(x, x, 0.5).item(), 4)  # positives identical, negatives orthogonal
    0.4327
    """
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    logits = z @ z.T / temperature
    g = torch.arange(n, device=a.device) if groups is None else groups.to(a.device)
    g = torch.cat([g, g])
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    drop = g[:, None] == g[None, :]  # self and same-volume rows, positive put back below
    drop[torch.arange(2 * n, device=a.device), pos] = False
    return F.cross_entropy(logits.masked_fill(drop, float("-inf")), pos)


def contrastive_vectors(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent between the student's pooled vectors and the teacher's vectors of the other view.

    >>> v = torch.randn(4, 16)
    >>> contrastive_vectors(v, swap_views(v)).item() < contrastive_vectors(v, torch.randn(4, 16)).item()
    True
    """
    n = student.shape[0] // 2
    groups = torch.arange(n, device=student.device).repeat(2)
    return nt_xent(student, swap_views(teacher.detach()), temperature, groups)


def contrastive_voxels(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """C-CVA: NT-Xent over aligned voxels; the positive is the same voxel of the same volume in the other view.

    Inputs ``[2B, C, o, o, o]``; every other voxel of every volume is a negative.

    >>> x = torch.randn(2, 8, 2, 2, 2)
    >>> contrastive_voxels(x, swap_views(x)).item() < contrastive_voxels(x, torch.randn(2, 8, 2, 2, 2)).item()
    True
    """
    n2, c = student.shape[:2]
    v = student[0, 0].numel()
    flat = lambda x: x.flatten(2).transpose(1, 2).reshape(-1, c)  # [(2B·o³), C], row = (view-row, voxel)
    groups = (torch.arange(n2, device=student.device) % (n2 // 2))[:, None] * v + torch.arange(v, device=student.device)
    return nt_xent(flat(student), flat(swap_views(teacher.detach())), temperature, groups.reshape(-1))


def gram_consistency(student: torch.Tensor, teacher: torch.Tensor, norm: str = "fork") -> torch.Tensor:
    """Difference of the channel Gram matrices of the aligned student and other-view teacher.

    ``norm="fork"``: the reference fork's Gram branch (``AlignedMAELoss``): voxel features L2-normalised
    over channels, ``G = XᵀX`` summed over the ``V`` aligned voxels (``[C, C]`` per row, NOT divided by
    ``V``), loss = mean over rows and entries of ``(G_s - G_t)²``. Its entries are ~``V/C``, so the term
    is ~``V/C²``: 0.004-0.013 in real runs, two orders below the cosine's ~2 (docs/ladder.md, the Gram table).

    ``norm="cosine"``: the CVA cosine's form on the Gram matrices, ``2 - 2 cos(G_s, G_t)`` with the
    matrices flattened, averaged over rows. Free of ``C`` and ``V``; in [0, 2] (Gram matrices of real
    features have a non-negative inner product), ~2 when the two views' feature structures are unrelated.

    >>> x = torch.randn(2, 4, 3, 3, 3)
    >>> gram_consistency(x, swap_views(x)).item()
    0.0
    >>> s, t = torch.zeros(2, 2, 1, 1, 2), torch.zeros(2, 2, 1, 1, 2)
    >>> s[:, 0], t[:, 1] = 1.0, 1.0  # 2 voxels: student all channel 0, teacher all channel 1
    >>> gram_consistency(s, t).item()  # G_s = diag(2, 0), G_t = diag(0, 2): mean of (4, 0, 0, 4)
    2.0
    >>> gram_consistency(s, t, "cosine").item()  # orthogonal Gram matrices: the largest value
    2.0
    """
    s = F.normalize(student.float(), dim=1).flatten(2)  # [2B, C, V]
    t = F.normalize(swap_views(teacher.detach()).float(), dim=1).flatten(2)
    if norm == "fork":
        return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).pow(2).mean()
    if norm == "cosine":  # ⟨XᵀX, YᵀY⟩ = ‖XYᵀ‖²: V×V voxel cosines, C/V times cheaper and exact in float32
        sq = lambda a, b: (a.transpose(1, 2) @ b).pow(2).sum(dim=(1, 2))
        return 2.0 - 2.0 * (sq(s, t) / (sq(s, s) * sq(t, t)).sqrt()).mean()
    raise ValueError(f"gram norm {norm!r}: use 'fork' or 'cosine'")
