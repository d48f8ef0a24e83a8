"""Scoring a fine-tuned network on its held-out cases: sliding-window segmentation (nnU-Net's tiling,
half-patch steps, Gaussian importance weights) or one centre patch per image for cls / reg."""

from __future__ import annotations

import numpy as np
import torch

from trainers.finetune_data import centre_patch, gaussian_weights, sliding_windows, to_indices, whole_case
from trainers.metrics import classification_scores, nanmean, regression_scores, segmentation_scores


@torch.no_grad()
def segment(model: torch.nn.Module, image: np.ndarray, patch, outputs: int) -> np.ndarray:
    """The arg-max label map of ``image`` [Z, Y, X] (padded to the patch where smaller, then cut back)."""
    shape = image.shape
    padded = np.pad(image, [(0, max(0, p - n)) for n, p in zip(shape, patch)])
    weights = torch.from_numpy(gaussian_weights(patch))
    total = torch.zeros((outputs, *padded.shape))
    norm = torch.zeros(padded.shape)
    for window in sliding_windows(padded.shape, patch):
        x = torch.from_numpy(np.ascontiguousarray(padded[window]))[None, None].float()
        total[(slice(None), *window)] += model(x)[0].float().softmax(0) * weights
        norm[window] += weights
    labels = (total / norm).argmax(0).numpy().astype(np.uint8 if outputs <= 256 else np.int32)
    return labels[tuple(slice(0, n) for n in shape)]


def prediction_file(folder, key: str):
    """Where a held-out case's predicted label map is kept (``<fold>/predictions/<key with / as __>.npz``)."""
    return folder / "predictions" / (key.replace("/", "__") + ".npz")


def score_cases(model: torch.nn.Module, args, cases, values: list, folder=None) -> dict:
    """``{"metrics": {...}, "cases": [...]}`` of one fold: each case's prediction summary and the fold's
    metrics (seg: per class under the label value it has in the store; an undefined metric is NaN)."""
    model.eval()
    outputs = len(values)
    patch = tuple(args.patch_size)
    rows = []
    if args.task == "seg":
        for case in cases:
            image, label = whole_case(args.store, case)
            pred = segment(model, image, patch, outputs)
            if folder is not None:  # the label values of the store, as the label map it is scored against
                path = prediction_file(folder, case.key)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, label=np.asarray(values)[pred].astype(label.dtype))
            s = segmentation_scores(to_indices(label, values), pred, classes=range(1, outputs), spacing=(1.0, 1.0, 1.0),
                                    tolerance_mm=args.tolerance_mm)
            rows.append({"key": case.key, **s["mean"],
                         "per_class": {str(values[c]): d
                                       for c, d in s["per_class"].items()}})
        metrics = {m: nanmean([r[m] for r in rows]) for m in ("dsc", "nsd")}
        return {"metrics": metrics, "cases": rows}
    outs = []
    with torch.no_grad():
        for case in cases:
            image, _ = whole_case(args.store, case)
            x = torch.from_numpy(np.ascontiguousarray(centre_patch(image, patch)))[None, None].float()
            outs.append(model(x)[0].float().numpy())
    truth = [c.target for c in cases]
    if args.task == "cls":
        logits = np.stack(outs)
        metrics = classification_scores([int(t) for t in truth], logits)
        rows = [{"key": c.key, "target": int(t), "logits": lg.tolist()} for c, t, lg in zip(cases, truth, logits)]
    else:
        pred = [float(o[0]) for o in outs]
        metrics = regression_scores(truth, pred)
        rows = [{"key": c.key, "target": t, "prediction": p} for c, t, p in zip(cases, truth, pred)]
    return {"metrics": metrics, "cases": rows}

