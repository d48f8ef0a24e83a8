"""``probe.png``: mid-slices of the probe volume, its tissue labels, k-means and the probe predictions.

Rows are the axial (mid z), coronal (mid y) and sagittal (x at ¾: the scored right hemisphere)
slices; columns the image, the labels, the model's k-means (k = 4, clusters matched to labels by
the Hungarian assignment so colours compare) and the linear probe's prediction for each source.
A dashed line marks the hemisphere split (left: fit, right: scored).
"""

from __future__ import annotations

import io

import numpy as np

COLOURS = ("#000000", "#3b8bd9", "#e8a33d", "#f2f2f2")


def match_clusters(clusters: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Relabel clusters to the labels they overlap most (one-to-one, Hungarian); the rest keep ids ≥ n labels.

    >>> match_clusters(np.array([2, 2, 0, 1]), np.array([0, 0, 1, 2])).tolist()
    [0, 0, 1, 2]
    """
    from scipy.optimize import linear_sum_assignment

    k, n = int(clusters.max()) + 1, int(labels.max()) + 1
    overlap = np.zeros((k, n), np.int64)
    np.add.at(overlap, (clusters.ravel(), labels.ravel()), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.arange(k) + n
    mapping[rows] = cols
    return mapping[clusters]


def probe_png(maps: dict, results: dict, *, title: str = "", dpi: int = 80) -> bytes:
    """Render the figure to PNG bytes (written atomically by the caller)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from trainers.tissue import CLASSES

    image, labels = maps["image"].astype(np.float32), maps["labels"]
    cmap = ListedColormap(list(COLOURS) + ["#c03030", "#30a040", "#9050c0", "#808000"][: 8 - len(COLOURS)])
    panels = [("image", image, None), ("tissue labels", labels, "lab")]
    if "model" in maps:
        r = results["model"]
        panels.append((f"k-means (model) ARI {r['ari']:.2f}", match_clusters(maps["model"]["kmeans"], labels), "lab"))
    for name in ("model", "random", "intensity"):
        if name in maps:
            panels.append((f"probe ({name}) bacc {results[name]['balanced_accuracy']:.2f}", maps[name]["probe"], "lab"))
    z, y, x = (n // 2 for n in labels.shape)
    xs = 3 * labels.shape[2] // 4
    cuts = [("axial", lambda a: a[z]), ("coronal", lambda a: a[:, y, :]), ("sagittal", lambda a: a[:, :, xs])]
    fig = Figure(figsize=(2.2 * len(panels), 2.3 * len(cuts) + 0.6), dpi=dpi)
    axes = fig.subplots(len(cuts), len(panels), squeeze=False)
    lo, hi = np.percentile(image, [1, 99])
    for i, (cut, take) in enumerate(cuts):
        for j, (name, vol, kind) in enumerate(panels):
            ax = axes[i, j]
            if kind is None:
                ax.imshow(take(vol), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            else:
                ax.imshow(take(vol), cmap=cmap, vmin=-0.5, vmax=7.5, origin="lower", interpolation="nearest")
            if cut != "sagittal":
                ax.axvline(x - 0.5, color="w", lw=0.6, ls="--")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=7)
        axes[i, 0].text(-0.08, 0.5, cut, transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right", fontsize=7)
    fig.legend(handles=[Patch(facecolor=c, edgecolor="k", label=n) for c, n in zip(COLOURS, CLASSES)], loc="lower center",
               ncol=len(CLASSES), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
