"""Fine-tuning throughput: steps/s and patches/s of ``python -m trainers.finetune`` per task.

Runs the real command (one fold, one process each) on a store and reads its ``log.jsonl``; the first
``--warmup`` steps are left out. Without ``--store`` the embedded real-MRI default is preprocessed
into a temporary store and given a made-up class and age per image (cls / reg); ``seg`` needs a store
with label maps (``--store``, e.g. an nnU-Net raw dataset preprocessed by ``openmind-prep preprocess``).

    python benchmarks/finetune.py                                   # CPU: tiny, 32³, cls and reg
    python benchmarks/finetune.py --store S --tasks seg --config finetune_resenc_l --patch-size 128   # a GPU

No peer is run: nnU-Net's trainer needs its own preprocessed dataset (the nnU-Net route in
docs/finetune.md); the step itself is the same network, loss and optimiser.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def targets_csv(store: Path, dest: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from openmind_prep.store.store import Store

    with dest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "dx", "age"])
        for i, row in enumerate(Store.open(store).ok_rows()):
            w.writerow([row["image_path"], i % 2, 20 + 7 * i])
    return dest


def run_task(task: str, store: Path, labels: Path, out: Path, args: argparse.Namespace) -> dict:
    steps = args.steps + args.warmup
    cmd = [sys.executable, "-m", "trainers.finetune", "--store", str(store), "--task", task, "--init", "scratch",
           "--config", args.config, "--out", str(out), "--fold", "0", "--folds", "2", "--epochs", "1",
           "--iterations", str(steps), "--accumulation", "1", "--device", args.device, "--ckpt-every", str(10 * steps)]
    if task != "seg":
        cmd += ["--labels", str(labels), "--target", "dx" if task == "cls" else "age"]
    if args.patch_size:
        cmd += ["--patch-size", str(args.patch_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"task": task, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    rows = [json.loads(line) for line in (out / "scratch" / "fold_0" / "log.jsonl").read_text().splitlines()]
    rate = statistics.median(r["samples_per_s"] for r in rows[args.warmup:])
    batch = json.loads((out / "config.json").read_text())["batch_size"]
    return {"task": task, "patches_per_s": rate, "steps_per_s": rate / batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=None, help="Preprocessed store (default: the embedded sample).")
    p.add_argument("--tasks", nargs="+", default=["cls", "reg"], choices=["seg", "cls", "reg"])
    p.add_argument("--config", default="finetune_tiny_cpu")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=8, help="Timed steps per task.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed first steps.")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({args.threads or torch.get_num_threads()} threads)"
    with tempfile.TemporaryDirectory() as tmp:
        if args.store is None:
            from train_step import build_store

            store = build_store(Path(tmp))
        else:
            store = args.store
        labels = targets_csv(store, Path(tmp) / "labels.csv")
        results = [run_task(t, store, labels, Path(tmp) / t, args) for t in args.tasks]
    print(f"\nfine-tune step ({args.config}) on {device}, torch {torch.__version__}")
    print(f"{'task':6} {'steps/s':>8} {'patches/s':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['task']:6}  failed: {r['error']}")
        else:
            print(f"{r['task']:6} {r['steps_per_s']:8.3f} {r['patches_per_s']:10.2f}")


if __name__ == "__main__":
    main()
