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
    # Convolutions pad with zeros, and a stride-2 one only at the low edge: its features there differ
    # from the rest (a one-voxel band in clusters.png). Replicate the edges by half the multiple each side
    # (the total stays a multiple), encode, cut the margin off. A ViT (Primus: fixed input size) needs none.
    pad = 0 if hasattr(backbone, "eva") or (multiple // 2) % stride else multiple // 2
    if pad:
        x = F.pad(x, [pad] * 6, mode="replicate")
    feats, _ = stage_features(backbone, x, decode=False)
    grid = [(s + 2 * pad) // stride for s in shape]
    up = [F.normalize(F.interpolate(f.float(), size=grid, mode="trilinear", align_corners=False), dim=1) for f in feats]
    out = torch.cat(up, dim=1)[0]
    m = pad // stride
    return out[:, m: m + shape[0] // stride, m: m + shape[1] // stride, m: m + shape[2] // stride]


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


def clusters_figure(volume: torch.Tensor, labels: np.ndarray, *, title: str = "", n_slices: int = 4):
    """Rows: image slices across the first stored axis (z), then the same slices coloured by cluster, with a
    colour legend (one entry per cluster) inside the figure. Tests read its text and layout."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = int(labels.max()) + 1
    colours = [f"C{i}" for i in range(max(k, 1))]
    stride = max(1, volume.shape[1] // labels.shape[0])
    vol = volume[0, ::stride, ::stride, ::stride][: labels.shape[0], : labels.shape[1], : labels.shape[2]].float().cpu().numpy()
    idx = np.linspace(0.25, 0.75, n_slices) * (labels.shape[0] - 1)
    fig = Figure(figsize=(2.2 * n_slices + 0.5, 5.6))
    fig.subplots_adjust(left=0.07, right=0.99, top=0.88, bottom=0.15, wspace=0.05, hspace=0.08)
    axes = fig.subplots(2, n_slices, squeeze=False)
    lo, hi = np.percentile(vol, [1, 99])
    for j, i in enumerate(idx.round().astype(int)):
        axes[0, j].imshow(vol[i], cmap="gray", vmin=lo, vmax=hi, origin="lower")
        axes[1, j].imshow(labels[i], cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
                          origin="lower", interpolation="nearest")
        axes[0, j].set_title(f"z = {i * stride} of {volume.shape[1]}", fontsize=9)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("k-means cluster", fontsize=9)
    fig.legend(handles=[Patch(facecolor=c, edgecolor="k", label=f"cluster {n}") for n, c in enumerate(colours)],
               loc="lower center", ncol=min(k, 8), fontsize=9, frameon=False,
               title="colour = cluster of the voxel's features (numbers are arbitrary)", title_fontsize=9)
    fig.suptitle(f"{title}\nslices across the first stored axis (z); each panel shows y (up) × x (right)", fontsize=10)
    return fig


def save_clusters_png(volume: torch.Tensor, labels: np.ndarray, path: Path, *, title: str = "",
                      n_slices: int = 4, dpi: int = 80) -> Path:
    """Write :func:`clusters_figure` as a PNG to ``path``; returns it."""
    fig = clusters_figure(volume, labels, title=title, n_slices=n_slices)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out
