"""``OUT/finetune.json`` and ``OUT/finetune.png``: every fold's metrics, mean ± sd, the paired difference
to scratch, the settings and the sha256 of the initial weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

from openmind_prep.core import atomic
from trainers.metrics import CLS_METRICS, REG_METRICS, SEG_METRICS, summarise

NAMES = {"seg": SEG_METRICS, "cls": CLS_METRICS, "reg": REG_METRICS}
JSON, PNG = "finetune.json", "finetune.png"


def _nan(value):
    return math.nan if value is None else value


def plain(value):
    """NaN → null, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def settings_of(args) -> dict:
    """The run's flags as plain JSON values (config.json, every checkpoint, finetune.json)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}


def write_report(args, done: dict[str, list[dict]], digest: str) -> dict:
    """Write both files; returns the one-line summary (overall means of the main run)."""
    names = NAMES[args.task]
    runs = {}
    for run, results in done.items():
        folds = [{"fold": r["fold"], **r["metrics"]} for r in results]
        overall = summarise([{k: _nan(v) for k, v in f.items()} for f in folds], names)
        runs[run] = {"folds": folds, "overall": overall}
    main = "pretrained" if "pretrained" in runs else "scratch"
    report = {"task": args.task, "init": args.init, "init_sha256": digest, "metrics": list(names),
              "folds": runs[main]["folds"], "overall": runs[main]["overall"], "runs": runs,
              "settings": settings_of(args)}
    if "pretrained" in runs and "scratch" in runs:
        diffs = {}
        for m in names:
            per_fold = [_nan(p[m]) - _nan(s[m]) for p, s in zip(runs["pretrained"]["folds"], runs["scratch"]["folds"])]
            diffs[m] = {"per_fold": per_fold, **summarise([{m: d} for d in per_fold], [m])[m]}
        report["paired_difference"] = diffs
    atomic.write_text(args.out / JSON, json.dumps(plain(report), indent=1) + "\n")
    png = figure(args.out, report)
    atomic.write_with(args.out / PNG, lambda tmp: tmp.write_bytes(png))
    return {"task": args.task, "written": str(args.out / JSON),
            **{m: plain(runs[main]["overall"][m]["mean"]) for m in names}}


def _curves(out: Path, run: str, fold: int) -> tuple[list[int], list[float]]:
    path = out / run / f"fold_{fold}" / "log.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def figure(out: Path, report: dict, dpi: int = 90) -> bytes:
    """Learning curves per fold (left) and each metric's bars per run with each fold's point (right)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=dpi)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for run, style in (("pretrained", "-"), ("scratch", "--")):
        for f in report["runs"].get(run, {}).get("folds", []):
            steps, losses = _curves(out, run, f["fold"])
            left.plot(steps, losses, style, color=colours[f["fold"] % len(colours)], label=f"{run} fold {f['fold']}")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.set_title("learning curves")
    left.legend(fontsize=8, loc="upper right")
    names, runs = report["metrics"], list(report["runs"])
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        means = [_nan(report["runs"][run]["overall"][m]["mean"]) for m in names]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))]
        right.bar(xs, means, width, label=f"{run} (mean of folds)", alpha=0.6, color=colours[i])
        for j, m in enumerate(names):
            points = [_nan(f[m]) for f in report["runs"][run]["folds"]]
            right.plot([xs[j]] * len(points), points, "o", color="black", markersize=4,
                       label="one fold" if i == 0 and j == 0 else None)
    right.set_xticks(range(len(names)), names)
    right.set_title(f"held-out scores ({report['task']}, {len(report['folds'])} folds)")
    right.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
