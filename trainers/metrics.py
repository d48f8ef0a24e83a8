"""The downstream metrics of the seed's table, on plain numpy arrays.

Segmentation: Dice (DSC) and normalised surface Dice (NSD, Nikolov et al. 2021: the fraction of both
surfaces that lie within ``tolerance_mm`` of the other) per foreground class, on label maps in the
stored ``[Z, Y, X]`` order with the voxel spacing in mm in the same order. A class absent from both
the truth and the prediction is NaN for that case (nnU-Net's evaluation does the same) and left out
of means. Classification: balanced accuracy, AUROC and average precision (scikit-learn). Regression:
mean absolute error and Pearson's r.

>>> truth = np.zeros((4, 4, 4), np.uint8); truth[1:3, 1:3, 1:3] = 1
>>> segmentation_scores(truth, truth, classes=(1,), spacing=(1, 1, 1))["mean"]
{'dsc': 1.0, 'nsd': 1.0}
>>> round(regression_scores([1.0, 2.0, 3.0], [1.5, 2.0, 2.5])["mae"], 4)
0.3333
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

SEG_METRICS = ("dsc", "nsd")
CLS_METRICS = ("balanced_accuracy", "auroc", "ap")
REG_METRICS = ("mae", "pearson_r")


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """2|T∩P| / (|T| + |P|) of two boolean masks; NaN when both are empty."""
    total = int(truth.sum()) + int(pred.sum())
    return math.nan if total == 0 else 2.0 * int(np.logical_and(truth, pred).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """The mask's voxels with a 6-neighbour outside it (the array's border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_dice(truth: np.ndarray, pred: np.ndarray, tolerance_mm: float, spacing: Sequence[float]) -> float:
    """Normalised surface Dice of two boolean masks: (|S_P within τ of S_T| + |S_T within τ of S_P|) /
    (|S_P| + |S_T|), distances in mm (Euclidean, ``spacing`` per axis). NaN when both are empty; 0 when
    one is."""
    s_t, s_p = _surface(truth), _surface(pred)
    n_t, n_p = int(s_t.sum()), int(s_p.sum())
    if n_t + n_p == 0:
        return math.nan
    if n_t == 0 or n_p == 0:
        return 0.0
    to_t = ndimage.distance_transform_edt(~s_t, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~s_p, sampling=spacing)
    close = int((to_t[s_p] <= tolerance_mm).sum()) + int((to_p[s_t] <= tolerance_mm).sum())
    return close / (n_t + n_p)


def nanmean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when none are)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def segmentation_scores(truth: np.ndarray, pred: np.ndarray, *, classes: Sequence[int], spacing: Sequence[float],
                        tolerance_mm: float = 1.0) -> dict:
    """``{"per_class": {c: {"dsc", "nsd"}}, "mean": {"dsc", "nsd"}}`` of one case (label maps)."""
    if truth.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {truth.shape}")
    per_class = {}
    for c in classes:
        t, p = truth == c, pred == c
        per_class[int(c)] = {"dsc": dice(t, p), "nsd": surface_dice(t, p, tolerance_mm, spacing)}
    mean = {m: nanmean([s[m] for s in per_class.values()]) for m in SEG_METRICS}
    return {"per_class": per_class, "mean": mean}


def classification_scores(truth: Sequence[int], scores: np.ndarray) -> dict:
    """Balanced accuracy of the arg-max, AUROC and AP (one-vs-rest, macro, for more than two classes) of
    ``scores`` [N, K] (probabilities or logits; softmax is monotone, so AUROC/AP are the same). A metric
    that is undefined on these labels (one class only) is NaN."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    out = {"balanced_accuracy": float(balanced_accuracy_score(truth, scores.argmax(1)))}
    if len(np.unique(truth)) < 2:
        return {**out, "auroc": math.nan, "ap": math.nan}
    if scores.shape[1] == 2:  # class 1's margin: monotone in its softmax probability
        margin = scores[:, 1] - scores[:, 0]
        out["auroc"] = float(roc_auc_score(truth, margin))
        out["ap"] = float(average_precision_score(truth, margin))
    else:
        probs = np.exp(scores - scores.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        onehot = np.eye(scores.shape[1])[truth]
        out["auroc"] = float(roc_auc_score(truth, probs, multi_class="ovr", labels=list(range(scores.shape[1]))))
        out["ap"] = float(average_precision_score(onehot, probs, average="macro"))
    return out


def regression_scores(truth: Sequence[float], pred: Sequence[float]) -> dict:
    """Mean absolute error and Pearson's r (NaN when either side is constant)."""
    t, p = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    r = math.nan if t.std() == 0 or p.std() == 0 else float(np.corrcoef(t, p)[0, 1])
    return {"mae": float(np.abs(t - p).mean()), "pearson_r": r}


def summarise(folds: Sequence[dict], names: Sequence[str]) -> dict:
    """``{name: {"mean", "sd", "n"}}`` over the folds' values (NaN folds left out; sd with ddof=1, 0 for one).

    >>> summarise([{"dsc": 0.5}, {"dsc": 0.7}], ["dsc"])["dsc"]["mean"]
    0.6
    """
    out = {}
    for name in names:
        values = [f[name] for f in folds if name in f and not math.isnan(f[name])]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[name] = {"mean": round(float(np.mean(values)), 12) if values else math.nan, "sd": sd, "n": len(values)}
    return out
