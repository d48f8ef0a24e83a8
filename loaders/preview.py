"""A PNG for people: mid-slices of both views of a few pairs with their overlap boxes drawn."""

from __future__ import annotations

from pathlib import Path

import torch

from loaders.sampler import ViewPair

_PLANES = ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))  # (sliced axis, (row axis, column axis))


def save_views_png(result: ViewPair, path: Path | str, n: int = 2, *, dpi: int = 80,
                   panel_inches: float = 2.0) -> Path:
    """Write ``n`` pairs as rows of 6 panels: view 1 then view 2, each cut in the three planes.

    Each panel is the middle slice of the view (first channel) with the overlap box outlined;
    a mirrored axis is drawn with a dashed outline. The image is ``6 * panel_inches * dpi`` wide
    and ``n * panel_inches * dpi`` high.

    >>> import tempfile
    >>> from loaders import OverlapViewSampler
    >>> pair = OverlapViewSampler((16, 20, 24))(torch.randn(1, 1, 30, 30, 30), torch.Generator().manual_seed(0))
    >>> save_views_png(pair, Path(tempfile.mkdtemp()) / "views.png", n=1).suffix
    '.png'
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the backend alone
    from matplotlib.patches import Rectangle

    b = result.views.shape[0] // 2
    n = min(n, b)
    if n < 1:
        raise ValueError("save_views_png needs at least one pair")
    views = result.views.detach().float().cpu()
    boxes = result.boxes.detach().float().cpu()
    fig = Figure(figsize=(6 * panel_inches, n * panel_inches), dpi=dpi)
    axes = fig.subplots(n, 6, squeeze=False)
    for i in range(n):
        lo, hi = torch.quantile(views[[i, b + i], 0].flatten()[::7], torch.tensor([0.01, 0.99])).tolist()
        for v, row in enumerate((i, b + i)):
            vol, box = views[row, 0], boxes[row]
            for k, (axis, (ra, ca)) in enumerate(_PLANES):
                ax = axes[i, 3 * v + k]
                img = vol.select(axis, vol.shape[axis] // 2)
                ax.imshow(img.numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
                r0, r1 = sorted((float(box[ra]) * vol.shape[ra], float(box[ra + 3]) * vol.shape[ra]))
                c0, c1 = sorted((float(box[ca]) * vol.shape[ca], float(box[ca + 3]) * vol.shape[ca]))
                mirrored = bool(box[ra] > box[ra + 3]) or bool(box[ca] > box[ca + 3])
                ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=1.5,
                                       edgecolor="red" if v == 0 else "cyan",
                                       linestyle="--" if mirrored else "-"))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"view {v + 1}, axis {axis} mid", fontsize=7)
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.93, 0.05, 0.15)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out


__all__ = ["save_views_png"]
