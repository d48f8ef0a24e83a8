"""k-means of learned voxel features over a volume's slices (the seed's "k-Means Clustering" slides).

The backbone encodes a whole (cropped) volume; every encoder stage's feature map is upsampled
trilinearly to the input grid, L2-normalised per stage and concatenated, and the voxels are
clustered with scikit-learn's k-means (fitted on a random subsample, then every voxel is
assigned). Anatomy a model has learned to tell apart shows up as coherent clusters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers.networks import stage_features


@torch.no_grad()
def voxel_features(backbone: torch.nn.Module, volume: torch.Tensor, *, multiple: int = 16,
                   stride: int = 1) -> torch.Tensor:
    """Per-voxel features ``[D, z/stride, y/stride, x/stride]`` of ``volume`` ``[1, z, y, x]``.

    The volume is cropped to a multiple of ``multiple``; ``stride`` 2 keeps memory at 1/8 for
    whole 1 mm brains (the feature maps are resampled to that grid, not computed on a coarser input).

    >>> from trainers.networks import tiny
    >>> voxel_features(tiny().eval(), torch.randn(1, 20, 33, 17)).shape
    torch.Size([120, 16, 32, 16])
    >>> voxel_features(tiny().eval(), torch.randn(1, 20, 33, 17), stride=2).shape
    torch.Size([120, 8, 16, 8])
    """
    shape = [s - s % multiple for s in volume.shape[1:]]
    if min(shape) == 0:
        raise ValueError(f"volume {tuple(volume.shape)} is smaller than {multiple} voxels along an axis")
    x = volume[None, :, : shape[0], : shape[1], : shape[2]].float()
    feats, _ = stage_features(backbone, x, decode=False)
    grid = [s // stride for s in shape]
    up = [F.normalize(F.interpolate(f.float(), size=grid, mode="trilinear", align_corners=False), dim=1) for f in feats]
    return torch.cat(up, dim=1)[0]


def kmeans_labels(features: torch.Tensor, k: int, *, seed: int = 0, fit_voxels: int = 20000) -> np.ndarray:
    """Cluster label per voxel (``[z, y, x]`` int) for features ``[D, z, y, x]``.

    >>> f = torch.cat([torch.zeros(2, 4, 4, 2), torch.ones(2, 4, 4, 2)], dim=3)
    >>> labels = kmeans_labels(f, 2)
    >>> bool((labels[..., :2] != labels[..., 2:]).all())
    True
    """
    from sklearn.cluster import KMeans

    d = features.shape[0]
    flat = features.reshape(d, -1).T.cpu().numpy().astype(np.float32)
    rng = np.random.default_rng(seed)
    fit = flat[rng.choice(len(flat), size=min(fit_voxels, len(flat)), replace=False)]
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(fit)
    return km.predict(flat).reshape(features.shape[1:])


def save_clusters_png(volume: torch.Tensor, labels: np.ndarray, path: Path, *, title: str = "",
                      n_slices: int = 4, dpi: int = 80) -> Path:
    """Rows: image slices, then the same slices coloured by cluster (slices along the first axis)."""
    from matplotlib.figure import Figure

    stride = max(1, volume.shape[1] // labels.shape[0])
    vol = volume[0, ::stride, ::stride, ::stride][: labels.shape[0], : labels.shape[1], : labels.shape[2]].float().cpu().numpy()
    idx = np.linspace(0.25, 0.75, n_slices) * (labels.shape[0] - 1)
    fig = Figure(figsize=(2.2 * n_slices, 4.6), dpi=dpi)
    axes = fig.subplots(2, n_slices, squeeze=False)
    lo, hi = np.percentile(vol, [1, 99])
    for j, i in enumerate(idx.round().astype(int)):
        axes[0, j].imshow(vol[i], cmap="gray", vmin=lo, vmax=hi, origin="lower")
        axes[1, j].imshow(labels[i], cmap="tab10", vmin=0, vmax=9, origin="lower", interpolation="nearest")
        axes[0, j].set_title(f"slice {i}", fontsize=8)
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out
