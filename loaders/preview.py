"""A PNG for people: mid-slices of both views of a few pairs, their overlap boxes, and where the two
views lie in the source volume.

Each row is one pair: view 1 cut in its three mid-planes (z, y, x), view 2 likewise, and, when the
source volumes are given, the source's axial slice through view 1's centre with both views'
footprints on it. Colours are fixed and explained in a legend on the figure: red = view 1, cyan =
view 2; a dashed overlap box means the view is mirrored along an axis of that plane (its box runs
from a larger to a smaller coordinate there). The figure grows with ``n`` at a fixed size per panel
and a fixed header, so titles stay readable for one pair as for eight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from loaders.sampler import ViewPair

_PLANES = ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))  # (sliced axis, (row axis, column axis))
_AXIS = "zyx"
_COLOURS = ("red", "cyan")


def _footprint(affine: Tensor, size: Sequence[int]) -> Tensor:
    """The 4 corners (source y, x) of a view's mid-plane along z, in drawing order, through ``affine``
    (view voxel index -> source voxel index)."""
    mid = (size[0] - 1) / 2
    corners = [(mid, a, b) for a, b in ((0, 0), (0, size[2] - 1), (size[1] - 1, size[2] - 1), (size[1] - 1, 0))]
    pts = torch.tensor([[*c, 1.0] for c in corners], dtype=torch.float64) @ affine.double().T
    return pts[:, 1:3]


def save_views_png(result: ViewPair, path: Path | str, n: int = 2, *, volumes: Sequence[Tensor] | Tensor | None = None,
                   names: Sequence[str] | None = None, dpi: int = 100, panel_inches: float = 1.9) -> Path:
    """Write ``n`` pairs as rows of 6 panels (view 1, view 2, each in three planes), plus a 7th with
    both views' outlines on the source when ``volumes`` (what the sampler was given) are passed;
    ``names`` (one per volume, e.g. the store keys) label the rows.

    >>> import tempfile
    >>> from loaders import OverlapViewSampler
    >>> vol = torch.randn(1, 1, 30, 30, 30)
    >>> pair = OverlapViewSampler((16, 20, 24))(vol, torch.Generator().manual_seed(0))
    >>> save_views_png(pair, Path(tempfile.mkdtemp()) / "views.png", n=1, volumes=vol).suffix
    '.png'
    """
    fig = views_figure(result, n, volumes=volumes, names=names, dpi=dpi, panel_inches=panel_inches)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png", facecolor="white")
    return out


def views_figure(result: ViewPair, n: int = 2, *, volumes: Sequence[Tensor] | Tensor | None = None,
                 names: Sequence[str] | None = None, dpi: int = 100, panel_inches: float = 1.9):
    """The ``matplotlib.figure.Figure`` that :func:`save_views_png` writes (Agg, no pyplot)."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the backend alone
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon, Rectangle

    b = result.views.shape[0] // 2
    n = min(n, b)
    if n < 1:
        raise ValueError("save_views_png needs at least one pair")
    sources = None if volumes is None else list(volumes)
    views = result.views.detach().float().cpu()
    boxes = result.boxes.detach().float().cpu()
    affines = result.affines.detach().cpu()
    cols = 6 + (sources is not None)
    # inches: legend + column titles, row labels (two lines with names), between panels
    head, left, gap = 0.75, 0.35 if names is None else 0.55, 0.08
    width = left + cols * panel_inches + (cols - 1) * gap + 0.1
    height = head + n * panel_inches + (n - 1) * gap + 0.1
    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.subplots_adjust(left=left / width, right=1 - 0.1 / width, top=1 - head / height, bottom=0.1 / height,
                        wspace=gap / panel_inches, hspace=gap / panel_inches)
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        lo, hi = torch.quantile(views[[i, b + i], 0].flatten()[::7], torch.tensor([0.01, 0.99])).tolist()
        for v, row in enumerate((i, b + i)):
            vol, box = views[row, 0], boxes[row]
            for k, (axis, (ra, ca)) in enumerate(_PLANES):
                ax = axes[i, 3 * v + k]
                ax.imshow(vol.select(axis, vol.shape[axis] // 2).numpy(), cmap="gray", vmin=lo, vmax=hi,
                          interpolation="nearest")
                r0, r1 = sorted((float(box[ra]) * vol.shape[ra], float(box[ra + 3]) * vol.shape[ra]))
                c0, c1 = sorted((float(box[ca]) * vol.shape[ca], float(box[ca + 3]) * vol.shape[ca]))
                mirrored = bool(box[ra] > box[ra + 3]) or bool(box[ca] > box[ca + 3])
                ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=1.6,
                                       edgecolor=_COLOURS[v], linestyle="--" if mirrored else "-"))
                if i == 0:
                    ax.set_title(f"view {v + 1} · {_AXIS[axis]} mid", fontsize=9)
        if sources is not None:
            ax = axes[i, 6]
            src = sources[i].detach().float().cpu()[0]
            centre = affines[i].double() @ torch.tensor([*((s - 1) / 2 for s in views.shape[2:]), 1.0],
                                                        dtype=torch.float64)
            z = int(min(max(round(float(centre[0])), 0), src.shape[0] - 1))
            ax.imshow(src[z].numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            for v, row in enumerate((i, b + i)):
                yx = _footprint(affines[row], views.shape[2:]).numpy()
                ax.add_patch(Polygon(yx[:, ::-1], closed=True, fill=False, lw=1.6, edgecolor=_COLOURS[v]))
            ax.set_xlim(-0.5, src.shape[2] - 0.5)
            ax.set_ylim(src.shape[1] - 0.5, -0.5)
            if i == 0:
                ax.set_title("source · z through view 1", fontsize=9)
        overlap = float(result.overlaps[i])
        label = f"pair {i + 1} · overlap {overlap:.0%}"
        if names is not None:
            label = f"{_short(names[i])}\n{label}"
        axes[i, 0].set_ylabel(label, fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Line2D([], [], color="red", lw=2, label="view 1 (its overlap box; on the source, its extent)"),
               Line2D([], [], color="cyan", lw=2, label="view 2 (likewise)"),
               Line2D([], [], color="0.3", lw=2, ls="--", label="dashed: view mirrored in this plane")]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.04 / height))
    return fig


def _short(name: str, width: int = 26) -> str:
    """A row label's volume name: the key's last part, cut to ``width`` characters.

    >>> _short("ds000001/sub-01/anat/sub-01_T1w"), _short("x" * 40, 10)
    ('sub-01_T1w', 'xxxxxxxxx…')
    """
    last = name.rstrip("/").rsplit("/", 1)[-1]
    return last if len(last) <= width else last[: width - 1] + "…"


__all__ = ["save_views_png", "views_figure"]
