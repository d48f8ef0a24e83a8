"""probe.png and clusters.png explain themselves (issue 24): readable fonts, a colour legend inside the
figure, no unexplained line, the slice axis named; clusters have no band along the panels' edge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.kmeans import clusters_figure, kmeans_labels, voxel_features
from trainers.networks import tiny
from trainers.probe_plot import probe_figure
from trainers.tissue import CLASSES, mni_tissue


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _inside(fig, renderer, artists) -> None:
    frame = fig.bbox
    for a in artists:
        box = a.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, a


def _texts(fig):
    return ([ax.title for ax in fig.axes if ax.get_title()] + [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
            + list(fig.legends[0].get_texts()) + [fig._suptitle])


@pytest.fixture(scope="module")
def small():
    return mni_tissue(2, 32, multiple=8)


def test_probe_png_fonts_legend_and_no_unexplained_line(small):
    rng = np.random.default_rng(0)
    lab = small.labels
    entry = {"ari": 0.5, "balanced_accuracy": 0.8, "remapped": {"balanced_accuracy": 0.4}}
    maps = {"image": small.image, "labels": lab, "scored_image": small.image, "scored_labels": lab,
            **{n: {"probe": rng.integers(0, 4, lab.shape), "kmeans": rng.integers(0, 4, lab.shape)}
               for n in ("model", "random", "intensity")}}
    fig = probe_figure(maps, {n: entry for n in ("model", "random", "intensity")}, title="tissue probe: x.pth")
    renderer = _drawn(fig)
    texts = _texts(fig)
    _inside(fig, renderer, texts + [fig.legends[0]])
    assert all(t.get_fontsize() >= 8 for t in texts)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(CLASSES)
    assert {ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()} == {"axial", "coronal", "sagittal"}
    for ax in fig.axes:  # no dashed line left without an entry in the legend
        assert not [ln for ln in ax.get_lines() if ln.get_linestyle() in ("--", "dashed")]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "scored: image" in titles and any("remapped 0.40" in t for t in titles)


def test_clusters_png_legend_slice_axis_and_no_edge_band(small):
    torch.manual_seed(0)
    volume = torch.from_numpy(small.image)[None]
    labels = kmeans_labels(voxel_features(tiny().eval(), volume, multiple=8), 6)
    fig = clusters_figure(volume, labels, title="k-means (k=6)")
    renderer = _drawn(fig)
    texts = _texts(fig)
    _inside(fig, renderer, texts + [fig.legends[0]])
    assert all(t.get_fontsize() >= 8 for t in texts)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"cluster {i}" for i in range(labels.max() + 1)]
    assert "first stored axis (z)" in fig._suptitle.get_text()
    assert all(ax.get_title().startswith("z = ") for ax in fig.axes if ax.get_title())

    def differs(axis: int, i: int, j: int) -> float:
        return float((np.take(labels, i, axis) != np.take(labels, j, axis)).mean())

    for axis in range(3):  # the edge slice is as similar to its neighbour as slices are inside the volume
        inner = np.mean([differs(axis, i, i + 1) for i in range(4, labels.shape[axis] - 5)])
        assert differs(axis, 0, 1) <= 1.5 * inner + 0.05, axis
        assert differs(axis, -1, -2) <= 1.5 * inner + 0.05, axis
