"""Pictures that explain: views.png (legend, titles inside the image at any n, the views' extent on the
source) and ``show`` (mask legend, raw-tree paths, close names on a miss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from _store_builder import build_store
from loaders import OverlapViewSampler
from loaders.preview import _footprint, save_views_png, views_figure
from openmind_prep.cli import main


@pytest.mark.parametrize("n", [1, 4])
def test_views_figure_titles_inside_and_legend_explains(n, tmp_path):
    vols = torch.randn(4, 1, 40, 36, 44, generator=torch.Generator().manual_seed(0))
    pair = OverlapViewSampler((16, 20, 24))(vols, generator=torch.Generator().manual_seed(1))
    names = [f"ds00000{i}/sub-0{i}/anat/sub-0{i}_T1w" for i in range(4)]
    fig = views_figure(pair, n, volumes=vols, names=names)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    texts = [ax.title for ax in fig.axes if ax.get_title()] + [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    assert len([ax for ax in fig.axes if ax.get_title()]) == 7 and len([ax for ax in fig.axes if ax.get_ylabel()]) == n
    legend = fig.legends[0]
    boxes = [t.get_window_extent(renderer) for t in texts] + [legend.get_window_extent(renderer)]
    for box in boxes:  # nothing clipped at the figure's edges
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, box
    for t in texts:  # titles never run into the legend, and are at least 8 pt
        assert not t.get_window_extent(renderer).overlaps(legend.get_window_extent(renderer))
        assert t.get_fontsize() >= 8
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]  # each row names its volume
    assert [r.split("\n")[0] for r in rows] == [f"sub-0{i}_T1w" for i in range(n)]
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("view 1" in s for s in labels) and any("view 2" in s for s in labels)
    assert any("dashed" in s and "mirrored" in s for s in labels)
    colours = {tuple(h.get_color()) if not isinstance(h.get_color(), str) else h.get_color()
               for h in legend.legend_handles[:2]}
    assert colours == {"red", "cyan"}
    # Pixels: the figure is a fixed size per panel, so one pair is as readable as four.
    out = save_views_png(pair, tmp_path / "v.png", n=n, volumes=vols, names=names)
    w, h = Image.open(out).size
    assert (w, h) == (round(fig.get_figwidth() * 100), round(fig.get_figheight() * 100))
    assert w == round((0.55 + 7 * 1.9 + 6 * 0.08 + 0.1) * 100)
    assert h == round((0.75 + n * 1.9 + (n - 1) * 0.08 + 0.1) * 100)


def test_footprint_of_a_crop_is_its_box_in_the_source():
    """With crops only, a view's affine is a shift (maybe mirrored): its footprint on the source's
    z slice is the rectangle [y0, y0 + Y - 1] x [x0, x0 + X - 1] (re-typed from the affine)."""
    vols = torch.randn(1, 1, 50, 60, 70)
    pair = OverlapViewSampler((16, 20, 24), flip=False, scale=False, rotate=False)(
        vols, generator=torch.Generator().manual_seed(2))
    for row in range(2):
        a = pair.affines[row].double()
        y0, x0 = float(a[1, 3]), float(a[2, 3])
        expected = [[y0, x0], [y0, x0 + 23], [y0 + 19, x0 + 23], [y0 + 19, x0]]
        np.testing.assert_allclose(_footprint(pair.affines[row], (16, 20, 24)).numpy(), expected)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root, written = build_store(tmp_path_factory.mktemp("show") / "store")
    return root, written


def _orange_in_bottom(png) -> int:
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    strip = a[int(a.shape[0] * 0.93):]
    return int((np.abs(strip - [255, 127, 14]).sum(-1) < 30).sum())  # tab:orange = anon_mask


def test_show_accepts_raw_paths_lists_close_names_and_explains_masks(store, tmp_path):
    root, written = store
    key = next(k for k in written if "anon_mask" in written[k])
    out = tmp_path / "x.png"
    raw_style = f"/data/raw/OpenMind/{key}.nii.gz"
    result = CliRunner().invoke(main, ["show", str(root), raw_style, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _orange_in_bottom(out) > 20  # the legend's anon_mask line
    plain = tmp_path / "plain.png"
    assert CliRunner().invoke(main, ["show", str(root), key, "--out", str(plain), "--no-masks"]).exit_code == 0
    assert _orange_in_bottom(plain) == 0
    typo = key.replace("sub-0", "sub-9", 1)
    bad = CliRunner().invoke(main, ["show", str(root), typo + ".nii.gz", "--out", str(out)])
    assert bad.exit_code == 2
    assert f"no stored image '{typo}.nii.gz'; close: " in bad.output and key in bad.output
    assert "Traceback" not in bad.output


def test_loss_png_names_weights_keeps_legend_off_curves_and_marks_resumes(tmp_path):
    """loss.png: the terms are drawn unweighted and the legend says so with each weight (read from
    config.json), the title writes the weighted sum out, the legend sits beside the axes (inside the
    figure, over no curve), and a resume recorded by the run folder is a labelled vertical line."""
    import json

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from trainers.loss_plot import loss_figure, record_resume, resumes, save_loss_png
    from trainers.runfolder import start_log

    out = tmp_path / "run"
    out.mkdir()
    config = {"recon_weight": 5.0, "consistency_weight": 1.0, "contrastive_weight": 0.1, "consistency": "cva"}
    (out / "config.json").write_text(json.dumps(config))
    rows = [{"step": s, "loss": 6 - s / 10, "recon": 1 - s / 100, "consistency": 1.5, "ntxent": 2.0}
            for s in range(1, 21)]
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    start_log(out, 12)  # the run was stopped at step 12 and resumed there
    assert resumes(out) == [12]
    record_resume(out, 20)  # reopened when finished (an --export): recorded, nothing to mark after it
    assert resumes(out) == [12, 20]
    fig = loss_figure(rows, config, resumes(out), "CVA pretraining (run)")
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert "total (weighted sum)" in labels
    assert "recon: reconstruction, unweighted (weight 5)" in labels
    assert "ntxent: contrastive NT-Xent, unweighted (weight 0.1)" in labels
    assert "resumed here" in labels
    assert "total = 5·recon + 1·consistency + 0.1·ntxent" in ax.get_title()
    box, axes_box, frame = legend.get_window_extent(renderer), ax.get_window_extent(renderer), fig.bbox
    assert not box.overlaps(axes_box)  # beside the axes: it covers no curve
    for b in (box, ax.yaxis.label.get_window_extent(renderer), ax.title.get_window_extent(renderer)):
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1, b
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"] == [12]
    assert save_loss_png(out).stat().st_size > 10_000
    record_resume(out, 0)  # a fresh start forgets earlier resumes
    assert resumes(out) == []
