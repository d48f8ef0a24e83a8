"""The downstream metrics against independent computations on the same predictions: MONAI's Dice and
surface Dice, a brute-force surface Dice, the rank (Mann-Whitney) form of AUROC, the step form of AP,
per-class recalls, scipy's Pearson r; folds never share a subject."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from trainers.folds import kfold, split, subject_of
from trainers.metrics import classification_scores, dice, regression_scores, segmentation_scores, surface_dice


def _blobs(seed: int, shape=(24, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    """A label map (0, 1, 2) and a perturbed prediction of it: smoothed noise thresholded."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    truth = np.digitize(field, np.quantile(field, [0.6, 0.85])).astype(np.uint8)
    noisy = ndimage.gaussian_filter(field + 0.4 * rng.standard_normal(shape) * field.std(), 1)
    pred = np.digitize(noisy, np.quantile(noisy, [0.55, 0.88])).astype(np.uint8)
    return truth, pred


def _onehot(labels: np.ndarray, k: int) -> torch.Tensor:
    return torch.from_numpy(np.eye(k, dtype=np.float32)[labels]).permute(3, 0, 1, 2)[None]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 1.2)])
def test_dice_and_surface_dice_equal_monai(seed, spacing):
    from monai.metrics import compute_dice, compute_surface_dice

    truth, pred = _blobs(seed)
    ours = segmentation_scores(truth, pred, classes=(1, 2), spacing=spacing, tolerance_mm=2.0)
    p, t = _onehot(pred, 3), _onehot(truth, 3)
    monai_dsc = compute_dice(p, t, include_background=False)[0].numpy()
    monai_nsd = compute_surface_dice(p, t, [2.0, 2.0], include_background=False, spacing=list(spacing))[0].numpy()
    for i, c in enumerate((1, 2)):
        assert ours["per_class"][c]["dsc"] == pytest.approx(float(monai_dsc[i]), abs=1e-6)
        assert ours["per_class"][c]["nsd"] == pytest.approx(float(monai_nsd[i]), abs=1e-6)
    assert ours["mean"]["dsc"] == pytest.approx(float(monai_dsc.mean()), abs=1e-6)
    assert 0.2 < ours["mean"]["nsd"] < 1.0  # a real, imperfect prediction


def test_surface_dice_equals_a_brute_force_count():
    truth, pred = _blobs(3, shape=(10, 9, 8))
    t, p = truth == 1, pred == 1
    spacing, tol = (1.5, 1.0, 0.7), 1.6

    def surface(m):
        pad = np.pad(m, 1)
        inner = pad[1:-1, 1:-1, 1:-1] & pad[:-2, 1:-1, 1:-1] & pad[2:, 1:-1, 1:-1] & pad[1:-1, :-2, 1:-1] \
            & pad[1:-1, 2:, 1:-1] & pad[1:-1, 1:-1, :-2] & pad[1:-1, 1:-1, 2:]
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    st, sp = surface(t), surface(p)
    d = np.sqrt(((st[:, None, :] - sp[None, :, :]) ** 2).sum(-1))
    expected = ((d.min(1) <= tol).sum() + (d.min(0) <= tol).sum()) / (len(st) + len(sp))
    assert surface_dice(t, p, tol, spacing) == pytest.approx(expected, abs=1e-12)


def test_empty_classes():
    empty = np.zeros((4, 4, 4), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert math.isnan(dice(empty, empty)) and math.isnan(surface_dice(empty, empty, 1.0, (1, 1, 1)))
    assert dice(full, empty) == 0.0 and surface_dice(full, empty, 1.0, (1, 1, 1)) == 0.0


def _auroc_by_ranks(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def _ap_step(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="stable")
    y = y[order]
    s = s[order]
    ap, tp, prev_recall = 0.0, 0, 0.0
    for i in range(len(y)):
        tp += y[i]
        if i + 1 < len(y) and s[i + 1] == s[i]:
            continue  # a threshold takes every tied score at once
        recall = tp / y.sum()
        ap += (recall - prev_recall) * tp / (i + 1)
        prev_recall = recall
    return ap


def test_classification_scores_equal_retyped_formulas():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    logits = np.stack([-y + rng.normal(0, 1.0, 40), y + rng.normal(0, 1.0, 40)], 1)
    ours = classification_scores(y, logits)
    pred = logits.argmax(1)
    recalls = [np.mean(pred[y == c] == c) for c in (0, 1)]
    assert ours["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    margin = logits[:, 1] - logits[:, 0]
    assert ours["auroc"] == pytest.approx(_auroc_by_ranks(y, margin))
    assert ours["ap"] == pytest.approx(_ap_step(y, margin))
    assert 0.5 < ours["auroc"] < 1.0


def test_regression_scores_equal_scipy():
    rng = np.random.default_rng(1)
    t = rng.uniform(20, 80, 30)
    p = t + rng.normal(0, 5, 30)
    ours = regression_scores(t, p)
    assert ours["mae"] == pytest.approx(np.mean(np.abs(t - p)))
    assert ours["pearson_r"] == pytest.approx(stats.pearsonr(t, p)[0])


def test_folds_never_share_a_subject_and_are_deterministic():
    rows = [{"image_path": f"ds{d}/sub-{s}/ses-{e}/anat/x.nii.gz", "dataset": f"ds{d}", "subject": f"sub-{s}"}
            for d in range(2) for s in range(7) for e in range(3)]
    rows += [{"image_path": f"plain/case_{i}.nii.gz", "dataset": "", "subject": ""} for i in range(5)]
    keys = [r["image_path"] for r in rows]
    subjects = {r["image_path"]: subject_of(r) for r in rows}
    folds = kfold(keys, subjects, k=5)
    assert sorted(k for f in folds for k in f) == sorted(keys)
    for i in range(5):
        train, held = split(folds, i)
        assert not {subjects[k] for k in train} & {subjects[k] for k in held}
    assert folds == kfold(list(reversed(keys)), subjects, k=5)  # the manifest's order does not matter
    with pytest.raises(ValueError, match="only 19 subject"):
        kfold(keys, subjects, k=20)
