"""CVA training-step throughput, peak memory and data-wait fraction per architecture.

Runs the real trainer (``python -m trainers.cva``, MAE + CVA + contrastive) for a few steps per
architecture on whatever device is present, each in its own process, and reports from its log:
steps/s, samples/s (volume pairs), peak memory (CUDA: max allocated; CPU: peak RSS) and the fraction
of step time spent waiting for data (store read in DataLoader workers + host→device copy + the
overlapping-view sampler, which runs on the training device). The first ``--warmup`` steps are
left out (cuDNN autotuning, worker start-up).

    python benchmarks/train_step.py                 # GPU: ResEnc-L 128³ and Primus-M 160³, batch 4
    python benchmarks/train_step.py --patch-size 64 --batch-size 1 --steps 4   # what fits a CPU

Without ``--store`` the embedded real-MRI default (openmind-prep sample, full size) is preprocessed
into a temporary store first. No peer is run: nnssl's trainer needs its own preprocessed dataset and
a CUDA machine; the reference's published figure is ~7-9 days of MAE pretraining on one L40.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PATCH = {"resenc-l": 128, "primus-m": 160, "tiny": 64}


def build_store(dest: Path) -> Path:
    """Preprocess the full embedded default (6 real MRI images, incl. a 1 mm MNI) into ``dest``."""
    sys.path.insert(0, str(ROOT))
    from openmind_prep.store.manifest import merge_manifest
    from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
    from openmind_prep.preprocess.job import PreprocessOptions, process_batch
    from openmind_prep.sources.embedded import build_sample_tree
    from openmind_prep.store.store import Store

    tree = build_sample_tree(dest / "tree")
    store = Store.create(dest / "store").root
    rows = process_batch(read_metadata(tree / METADATA_CSV), tree, store, PreprocessOptions())
    merge_manifest(store)
    print(f"store: {sum(r['status'] == 'ok' for r in rows)} images preprocessed into {store}", flush=True)
    return store


def run_arch(arch: str, store: Path, out: Path, args: argparse.Namespace, cuda: bool) -> dict:
    patch = args.patch_size or (REFERENCE_PATCH[arch] if cuda else 64)
    batch = args.batch_size or (4 if cuda else 1)
    steps = args.steps + args.warmup
    cmd = [sys.executable, "-m", "trainers.cva", "--store", str(store), "--out", str(out), "--arch", arch,
           "--patch-size", str(patch), "--batch-size", str(batch), "--steps", str(steps), "--warmup-steps", "1",
           "--num-workers", str(args.num_workers), "--no-checkpoint", "--no-resume", "--device", args.device,
           "--recon", "mae", "--consistency", "cva", "--contrastive", "--force"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"arch": arch, "patch": patch, "batch": batch, "error": proc.stderr.strip().splitlines()[-1]}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][args.warmup:]
    step_s = statistics.median(r["step_s"] for r in rows)
    return {"arch": arch, "patch": patch, "batch": batch, "steps_per_s": 1 / step_s,
            "samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
            "peak_mem_gib": max(r["peak_mem_bytes"] for r in rows) / 2**30,
            "data_wait_frac": sum(r["data_wait_frac"] * r["step_s"] for r in rows) / sum(r["step_s"] for r in rows),
            "loss_first_last": (rows[0]["loss"], rows[-1]["loss"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=None, help="Preprocessed store (default: build the embedded one).")
    p.add_argument("--archs", nargs="+", default=["resenc-l", "primus-m"], choices=sorted(REFERENCE_PATCH))
    p.add_argument("--patch-size", type=int, default=None, help="Override (default: 128/160 on GPU, 64 on CPU).")
    p.add_argument("--batch-size", type=int, default=None, help="Volumes per step (default: 4 on GPU, 1 on CPU).")
    p.add_argument("--steps", type=int, default=10, help="Timed steps per architecture.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed first steps.")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers reading the store.")
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: default).")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or build_store(Path(tmp))
        results = [run_arch(a, store, Path(tmp) / a, args, cuda) for a in args.archs]
    print(f"\nCVA train step (MAE + CVA + NT-Xent, student + EMA teacher) on {device}, torch {torch.__version__}")
    print(f"{'arch':10} {'patch':>6} {'batch':>5} {'steps/s':>8} {'pairs/s':>8} {'peak GiB':>9} {'data wait':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['arch']:10} {r['patch']:>6} {r['batch']:>5}  failed: {r['error']}")
            continue
        print(f"{r['arch']:10} {r['patch']:>5}³ {r['batch']:>5} {r['steps_per_s']:8.3f} {r['samples_per_s']:8.2f} "
              f"{r['peak_mem_gib']:9.2f} {100 * r['data_wait_frac']:9.1f}%")


if __name__ == "__main__":
    main()
