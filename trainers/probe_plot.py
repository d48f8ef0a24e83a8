"""``probe.png``: mid-slices of the fit volume and of the scored volume, with labels, k-means and predictions.

Rows are the axial (mid z), coronal (mid y) and sagittal (mid x) slices; columns the fit volume's
image and labels, the model's k-means on it (k = 4, clusters matched to labels by the Hungarian
assignment so colours compare), then the scored volume (another volume of the same anatomy), its
labels and the linear probe's prediction there for each source. The legend names the colours; the
remapped-contrast scores are in the titles of the probe columns.
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
    return _png(probe_figure(maps, results, title=title), dpi)


def probe_figure(maps: dict, results: dict, *, title: str = ""):
    """The matplotlib figure of :func:`probe_png` (tests read its text and layout)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from trainers.tissue import CLASSES

    image, labels = maps["image"].astype(np.float32), maps["labels"]
    scored_image, scored_labels = maps.get("scored_image", image).astype(np.float32), maps.get("scored_labels", labels)
    cmap = ListedColormap(list(COLOURS) + ["#c03030", "#30a040", "#9050c0", "#808000"][: 8 - len(COLOURS)])
    panels = [("fit: image", image, None), ("fit: labels", labels, "lab")]
    if "model" in maps:
        r = results["model"]
        panels.append((f"fit: k-means (model)\nARI {r['ari']:.2f}", match_clusters(maps["model"]["kmeans"], labels), "lab"))
    panels += [("scored: image", scored_image, None), ("scored: labels", scored_labels, "lab")]
    for name in ("model", "random", "intensity"):
        if name in maps:
            r = results[name]
            remapped = f", remapped {r['remapped']['balanced_accuracy']:.2f}" if "remapped" in r else ""
            panels.append((f"probe ({name})\nbacc {r['balanced_accuracy']:.2f}{remapped}", maps[name]["probe"], "lab"))
    cuts = [("axial", lambda a: a[a.shape[0] // 2]), ("coronal", lambda a: a[:, a.shape[1] // 2, :]),
            ("sagittal", lambda a: a[:, :, a.shape[2] // 2])]
    fig = Figure(figsize=(2.0 * len(panels) + 0.4, 2.0 * len(cuts) + 1.5))
    fig.subplots_adjust(left=0.04, right=0.995, top=1 - 1.0 / fig.get_figheight(), bottom=0.5 / fig.get_figheight(),
                        wspace=0.05, hspace=0.05)
    axes = fig.subplots(len(cuts), len(panels), squeeze=False)
    ranges = {id(image): np.percentile(image, [1, 99]), id(scored_image): np.percentile(scored_image, [1, 99])}
    for i, (cut, take) in enumerate(cuts):
        for j, (name, vol, kind) in enumerate(panels):
            ax = axes[i, j]
            if kind is None:
                lo, hi = ranges[id(vol)]
                ax.imshow(take(vol), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            else:
                ax.imshow(take(vol), cmap=cmap, vmin=-0.5, vmax=7.5, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i, 0].set_ylabel(cut, fontsize=9)
    fig.legend(handles=[Patch(facecolor=c, edgecolor="k", label=n) for c, n in zip(COLOURS, CLASSES)],
               loc="lower center", ncol=len(CLASSES), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
