"""Tissue probe of every rung of the ablation ladder on the tiny CPU config (the table in docs/benchmarks.md).

Each rung (``--recon ae|mae`` × ``--consistency none|cva|c-cva|gram`` × ``--contrastive`` on/off)
is trained with the same steps and seeds by the real trainer (``trainers.cva.train``, in this
process, tiny net, ``--config tiny_cpu``), then its student backbone is probed
(:func:`trainers.probe.probe_backbone`, MNI152 tissue labels, centre crop ``--crop``). The
random-init and intensity baselines are scored once per seed. Prints mean ± standard deviation over
the seeds as a markdown table.

    nice python benchmarks/probe_ladder.py          # 16 rungs × 3 seeds, 15 steps: ~25 min on the loaded 2-core CPU
    nice python benchmarks/probe_ladder.py --steps 10 --seeds 1 --rungs mae/cva/on ae/none/off

Without ``--store`` the embedded real-MRI default (openmind-prep sample) is preprocessed into a
temporary store first (the same as ``benchmarks/train_step.py``). No peer is run: no peer has a
probe of a 3-D SSL checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = (("ari", "ARI (k=4)"), ("nmi", "NMI (k=4)"), ("balanced_accuracy", "balanced acc."), ("mean_dice", "mean Dice"))
RUNGS = [f"{r}/{c}/{n}" for r, c, n in itertools.product(("ae", "mae"), ("none", "cva", "c-cva", "gram"), ("off", "on"))]


def flat(entry: dict) -> dict:
    dice = [v for v in entry["dice"].values() if v is not None]
    return {"ari": entry["ari"], "nmi": entry["nmi"], "balanced_accuracy": entry["balanced_accuracy"],
            "mean_dice": sum(dice) / len(dice)}


def train_rung(rung: str, seed: int, store: Path, out: Path, args: argparse.Namespace):
    from trainers.cva import parse_args, train

    recon, consistency, contrastive = rung.split("/")
    argv = ["--store", str(store), "--out", str(out), "--config", "tiny_cpu",
            "--steps", str(args.steps), "--warmup-steps", str(max(1, args.steps // 10)), "--seed", str(seed),
            "--recon", recon, "--consistency", consistency, "--contrastive" if contrastive == "on" else "--no-contrastive",
            "--patch-size", str(args.patch), "--no-checkpoint", "--no-resume", "--log-every", str(args.steps),
            "--threads", str(args.threads)]
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's status lines stay out of the table
        return train(parse_args(argv))["student"].backbone.cpu().eval()


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=None, help="Preprocessed store (default: the embedded sample).")
    p.add_argument("--steps", type=int, default=15, help="Training steps per rung (same for all).")
    p.add_argument("--seeds", type=int, default=3, help="Seeds per rung (0, 1, ...).")
    p.add_argument("--patch", type=int, default=32, help="View edge of the tiny runs.")
    p.add_argument("--crop", type=int, default=48, help="Probe volume centre crop.")
    p.add_argument("--fit-voxels", type=int, default=10000, help="Voxels the probe fits on.")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core machine).")
    p.add_argument("--rungs", nargs="+", default=RUNGS, help="recon/consistency/contrastive, e.g. mae/cva/on.")
    p.add_argument("--json", type=Path, default=None, help="Also write every per-seed number here.")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from trainers.networks import tiny
    from trainers.probe import probe_backbone, scored_volumes
    from trainers.tissue import mni_tissue

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    volume = mni_tissue(1, args.crop, multiple=8)
    scored = scored_volumes(1, args.crop, multiple=8)  # fitted on the 1 mm file, scored on the 2 mm one
    rows: dict[str, list[dict]] = {"random init (tiny)": [], "intensity (+ local mean/std)": []}
    rows.update({r: [] for r in args.rungs})
    with tempfile.TemporaryDirectory(prefix="probe-ladder-") as tmp:
        store = args.store
        if store is None:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from train_step import build_store

            store = build_store(Path(tmp))
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            res, _ = probe_backbone(tiny().eval(), volume, scored=scored, seed=seed, fit_voxels=args.fit_voxels)
            rows["random init (tiny)"].append(flat(res["model"]))
            rows["intensity (+ local mean/std)"].append(flat(res["intensity"]))
            for rung in args.rungs:
                t0 = time.perf_counter()
                backbone = train_rung(rung, seed, store, Path(tmp) / f"{rung.replace('/', '_')}_{seed}", args)
                res, _ = probe_backbone(backbone, volume, scored=scored, intensity=False, seed=seed, fit_voxels=args.fit_voxels)
                rows[rung].append(flat(res["model"]))
                print(f"seed {seed} {rung}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[rung][-1].items())
                      + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{args.steps} steps, {args.seeds} seeds, patch {args.patch}³, probe crop {args.crop}³ "
          f"({time.perf_counter() - t_all:.0f} s in all); mean ± standard deviation over seeds\n")
    print("| rung (recon/consistency/contrastive) | " + " | ".join(name for _, name in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(cell([v[k] for v in values]) for k, _ in METRICS) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
