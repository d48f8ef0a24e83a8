"""``OUT/loss.png``: the losses of a run against the step, saying how they add up.

The total is the weighted sum of the terms; the terms are drawn as computed, before their weights,
so the legend gives each one's weight (from ``OUT/config.json``) and the title writes the sum out.
The legend sits beside the axes, never over a curve. A resume is a dotted vertical line at its step
(the steps come from ``OUT/resumes.json``, kept by :func:`record_resume` when a run starts).
"""

from __future__ import annotations

import json
from pathlib import Path

from openmind_prep.core import atomic

RESUMES = "resumes.json"
#: log key -> (config key of its weight, what it is)
TERMS = {"recon": ("recon_weight", "reconstruction"), "consistency": ("consistency_weight", "aligned views"),
         "ntxent": ("contrastive_weight", "contrastive NT-Xent")}


def record_resume(out: Path, step: int) -> None:
    """Keep the steps at which the run in ``out`` was resumed: ``step`` 0 (a fresh start) clears
    them, a resume at ``step`` drops any recorded at or after it and adds it.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> record_resume(out, 4); record_resume(out, 9); record_resume(out, 6); resumes(out)
    [4, 6]
    >>> record_resume(out, 0); resumes(out)
    []
    """
    kept = [s for s in resumes(out) if 0 < s < step] + ([step] if step > 0 else [])
    if kept or (out / RESUMES).exists():
        atomic.write_text(out / RESUMES, json.dumps(kept) + "\n")


def resumes(out: Path) -> list[int]:
    """The recorded resume steps of the run in ``out`` (none when the file is missing or unreadable)."""
    try:
        steps = json.loads((out / RESUMES).read_text())
    except (OSError, ValueError):
        return []
    return [int(s) for s in steps if isinstance(s, int)] if isinstance(steps, list) else []


def _read_json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def loss_figure(rows: list[dict], config: dict, resumed_at: list[int], title: str):
    """The figure of :func:`save_loss_png` (matplotlib ``Figure``, no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 4.2), dpi=100)
    ax = fig.add_axes((0.09, 0.13, 0.49, 0.74))  # the right 40 % holds the legend
    weights = {key: config.get(weight) for key, (weight, _) in TERMS.items()}
    sum_parts = [f"{weights[k]:g}·{k}" for k in TERMS if weights[k] is not None and any(k in r for r in rows)]
    for key in ("loss", *TERMS, "probe_loss"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        if key == "loss":
            label = "total (weighted sum)"
        elif key == "probe_loss":
            label = "total on a fixed batch"
        else:
            weight = weights[key]
            label = f"{key}: {TERMS[key][1]}, unweighted" + (f" (weight {weight:g})" if weight is not None else "")
        ax.plot(*zip(*pts), label=label, lw=2 if key in ("loss", "probe_loss") else 1,
                marker="o" if key == "probe_loss" else None, ms=3)
    last = max(r["step"] for r in rows)
    for i, step in enumerate(s for s in resumed_at if s < last):  # reopening a finished run trains nothing
        ax.axvline(step, color="0.4", ls=":", lw=1.2, label="resumed here" if i == 0 else None)
    ax.set(xlabel="step", ylabel="loss (log scale)", yscale="log")
    ax.set_title(f"{title}\ntotal = " + (" + ".join(sum_parts) if sum_parts else "loss"), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)
    return fig


def save_loss_png(out: Path, name: str = "loss.png") -> Path | None:
    """Draw ``OUT/log.jsonl`` into ``OUT/loss.png`` (nothing when the log is empty)."""
    rows = _read_json_lines(out / "log.jsonl")
    if not rows:
        return None
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    consistency = config.get("consistency")
    title = f"CVA pretraining ({out.name})" + (f", consistency {consistency}" if consistency else "")
    fig = loss_figure(rows, config if isinstance(config, dict) else {}, resumes(out), title)
    path = out / name
    atomic.write_with(path, lambda f: fig.savefig(f, format="png", facecolor="white"))
    return path


__all__ = ["record_resume", "resumes", "loss_figure", "save_loss_png"]
