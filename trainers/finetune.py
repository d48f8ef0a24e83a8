"""Fine-tune a pretrained network on a labelled store and score it as the seed did, one file, top to bottom.

    python -m trainers.finetune --store S --task seg --init runs/cva --config finetune_tiny_cpu --out ft
    python -m trainers.finetune --store S --task cls --labels labels.csv --target dx --init hf://owner/repo \\
        --config finetune_resenc_l --folds 5 --fold 0 --out ft     # one fold per job; rerun without --fold to gather

Per fold (K folds by subject, :mod:`trainers.folds`): build the network (:mod:`trainers.finetune_model`),
load the initial weights (a ``trainers.cva`` run folder or checkpoint, an nnssl-format export, ``hf://``,
or ``scratch``), train ``epochs × iterations`` steps on random patches of the training cases
(:mod:`trainers.finetune_data`), then score every held-out case: ``seg`` by sliding-window inference
and DSC / NSD, ``cls`` / ``reg`` on the centre patch and balanced accuracy / AUROC / AP or MAE / Pearson r
(:mod:`trainers.metrics`). ``OUT/finetune.json`` gathers every fold (and the paired difference to
``scratch`` with ``--compare-scratch``), ``OUT/finetune.png`` draws it. Each fold's folder holds its
checkpoint (exact resume: rerun the same command), ``log.jsonl`` and ``result.json``; Ctrl-C / SIGTERM
save and stop after the current step."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from openmind_prep import __version__
from trainers import architectures, cli_args, runfolder, sanity
from trainers.runfolder import RunError, say

TASKS = ("seg", "cls", "reg")
#: What a fold's checkpoint holds (the fine-tuned network under ``student``, as the cva trainer's).
CHECKPOINT_KEYS = ("student", "optimizer", "step", "rng", "data", "config")


#: Every setting's default (the parser suppresses them, so a config file's value is not taken for a flag's).
DEFAULTS = {"store": None, "task": "seg", "labels": None, "target": None, "out": None, "init": None,
            "compare_scratch": False, "arch": "tiny", "folds": 5, "fold": None, "seed": 0, "patch_size": [128],
            "batch_size": 2, "epochs": 50, "iterations": 100, "lr": None, "accumulation": None, "tolerance_mm": 1.0,
            "device": "auto", "threads": 0, "ckpt_every": 100}


def get_args_parser() -> cli_args.ArgumentParser:
    """The flags, each with its default and when to change it (one-line errors, no abbreviations)."""
    p = cli_args.ArgumentParser("trainers.finetune", DEFAULTS, description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s (openmind-prep {__version__})")
    p.add_argument("--config", action="append", metavar="NAME_OR_FILE",
                   help="TOML file of `name = value` settings, or a shipped one by name (finetune_tiny_cpu, "
                        "finetune_resenc_l, finetune_primus_m); flags win.")
    g = p.add_argument_group("data")
    g.add_argument("--store", type=Path, help="Preprocessed store with label maps (seg) or images (cls/reg).")
    g.add_argument("--task", choices=TASKS, help="seg: label maps; cls: class index; reg: a number.")
    g.add_argument("--labels", type=Path,
                   help="cls/reg: CSV of targets keyed by store key or source image path (else --target is a manifest column).")
    g.add_argument("--target", help="cls/reg: the column holding the target.")
    g.add_argument("--out", type=Path, help="Output folder: one folder per fold, finetune.json, finetune.png.")
    g = p.add_argument_group("initial weights")
    g.add_argument("--init", help="RUN_FOLDER | checkpoint.pt | export.pth | hf://owner/repo[/file] | scratch.")
    g.add_argument("--compare-scratch", action="store_true",
                   help="Also train from scratch on the same folds and report the per-fold paired difference.")
    g.add_argument("--arch", help="Architecture (resenc-l, primus-m, tiny); must match --init.")
    g = p.add_argument_group("folds")
    g.add_argument("--folds", type=int, help="K of the K-fold split by subject (the seed: 5).")
    g.add_argument("--fold", type=int, help="Run only this fold (0-based); without it every fold runs.")
    g.add_argument("--seed", type=int, help="Split and training seed.")
    g = p.add_argument_group("schedule (the reference recipes by architecture and task)")
    g.add_argument("--patch-size", type=int, nargs="+", help="Training patch, 1 or 3 ints (128 as the seed).")
    g.add_argument("--batch-size", type=int, help="Patches per step (nnU-Net and FOMO: 2).")
    g.add_argument("--epochs", type=int, help="Epochs (the seed's nnU-Net runs: 50).")
    g.add_argument("--iterations", type=int, help="Steps per epoch (the seed's: 100).")
    g.add_argument("--lr", type=float, help="Peak learning rate (default: the recipe's).")
    g.add_argument("--accumulation", type=int, help="cls/reg: gradient accumulation (default 8 / 16).")
    g.add_argument("--tolerance-mm", type=float, help="NSD tolerance in mm (stored volumes are 1 mm).")
    g = p.add_argument_group("run")
    g.add_argument("--device", help="auto, cpu or cuda.")
    g.add_argument("--threads", type=int, help="CPU threads (0: torch's default).")
    g.add_argument("--ckpt-every", type=int, help="Checkpoint every N steps (and at the end of a fold).")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over the merged ``--config`` files over :data:`DEFAULTS`; a setting that cannot work exits 2 with one line."""
    parser = get_args_parser()
    args = argparse.Namespace(**{**DEFAULTS, **cli_args.given_settings(parser, argv)})
    if len(args.patch_size) == 1:
        args.patch_size = list(args.patch_size) * 3
    problem = settings_problem(args) or next(iter(sanity.problems(args)), None)
    if problem:
        parser.error(problem)
    return args


def settings_problem(args: argparse.Namespace) -> str | None:
    """The first setting that cannot work, as one line (``None``: all can)."""
    for flag in ("store", "out", "init"):
        if getattr(args, flag) is None:
            return f"--{flag} is required"
    if args.task != "seg" and not args.target:
        return f"--task {args.task} needs --target COLUMN"
    if args.fold is not None and not 0 <= args.fold < args.folds:
        return f"--fold {args.fold}: folds are 0..{args.folds - 1}"
    for flag in ("epochs", "iterations", "batch_size", "folds"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1"
    if args.lr is not None and not (args.lr > 0 and args.lr < float("inf")):
        return f"--lr {args.lr:g}: must be a finite number above 0"
    try:
        architectures.get(args.arch)
    except ValueError as err:
        return f"--arch: {err}"
    if args.init == "scratch" and args.compare_scratch:
        return "--compare-scratch with --init scratch compares scratch with itself; drop one"
    return None


def init_weights(args: argparse.Namespace) -> tuple[dict | None, str]:
    """The initial backbone weights (None for scratch) and their sha256 (over names, shapes and bytes)."""
    import torch

    from trainers.init_from import HF_PREFIX, fetch_hf, read_backbone_weights

    if args.init == "scratch":
        return None, "scratch"
    source = args.init
    try:
        path = fetch_hf(source, args.out / "_init") if source.startswith(HF_PREFIX) else Path(source)
        weights = read_backbone_weights(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise RunError(f"{source}: cannot read initial weights ({(str(err).splitlines() or [''])[0]})") from None
    digest = hashlib.sha256()
    for key in sorted(weights):
        t = weights[key]
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return weights, digest.hexdigest()


# --------------------------------------------------------------------------------------- one fold
def train_fold(args, run: str, fold: int, train_cases, held_cases, weights, values: list, stop) -> dict | None:
    """Train one fold (resuming from its checkpoint), score its held-out cases; ``None`` when stopped early."""
    import numpy as np
    import torch

    from trainers.finetune_data import Patches
    from trainers.finetune_report import plain, settings_of
    from trainers.finetune_model import build_model, build_optimizer, load_init, recipe

    out = args.out / run / f"fold_{fold}"
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    # ---- network and initial weights
    torch.manual_seed(args.seed * 1000 + fold)
    outputs = len(values)  # seg: label values; cls: classes; reg: one output
    model = build_model(args.arch, args.task, args.patch_size, outputs)
    if weights is not None and run == "pretrained":
        try:
            load_init(model, weights, args.init, args.task)
        except ValueError as err:
            raise RunError(str(err)) from None
    # ---- recipe: the reference's optimiser and schedule
    r = recipe(args.arch, args.task, pretrained=run == "pretrained", epochs=args.epochs)
    lr = r.lr if args.lr is None else args.lr
    accumulation = args.accumulation or r.accumulation
    optimizer = build_optimizer(model.parameters(), r)
    total = args.epochs * args.iterations
    patches = Patches(args.store, train_cases, args.task, args.patch_size, values)
    rng = np.random.default_rng([args.seed, fold])
    # ---- resume
    step = 0
    ckpt, _ = runfolder.load_checkpoint(out, keys=CHECKPOINT_KEYS)
    if ckpt is not None:
        model.load_state_dict(ckpt["student"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        rng.bit_generator.state = ckpt["data"]["numpy"]
        torch.set_rng_state(ckpt["rng"][0]["torch"])
        say(f"{run} fold {fold}: resumed at step {step}")
    runfolder.start_log(out, step)
    log = runfolder.StepLog(out, 1, total=total, initial=step, enabled=True, desc=f"{run} fold {fold}")
    loss_fn = _loss(args.task)
    # ---- loop
    model.train()
    started = time.perf_counter()
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = r.lr_at(step / args.iterations, args.epochs) * (lr / r.lr if r.lr else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(accumulation):
            x, y = patches.batch(args.batch_size, rng)
            loss = loss_fn(model(x), y) / accumulation
            loss.backward()
            loss_sum += float(loss.detach())
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip or float("inf")))
        if not (np.isfinite(loss_sum) and np.isfinite(norm)):  # stop before the weights change
            raise RunError(f"{run} fold {fold}: step {step + 1}: the loss ({loss_sum}) or gradient norm ({norm}) is "
                           f"not finite; the last checkpoint (step {step}) is kept")
        optimizer.step()
        step += 1
        log(step, {"loss": loss_sum, "lr": optimizer.param_groups[0]["lr"],
                   "samples_per_s": args.batch_size * accumulation / max(time.perf_counter() - started, 1e-9)})
        started = time.perf_counter()
        if step % args.ckpt_every == 0 or step == total or stop.signum is not None:
            runfolder.save_checkpoint(out, {"student": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "step": step, "rng": [{"torch": torch.get_rng_state()}],
                                            "data": {"numpy": rng.bit_generator.state}, "config": settings_of(args)})
        if stop.signum is not None:
            log.close()
            return None
    log.close()
    # ---- score the held-out cases
    from trainers.finetune_score import score_cases

    result = {"fold": fold, "run": run, "train": [c.key for c in train_cases], "held_out": [c.key for c in held_cases],
              **score_cases(model, args, held_cases, values, out)}
    from openmind_prep.core import atomic

    atomic.write_text(result_path, json.dumps(plain(result), indent=1) + "\n")
    return result


def _loss(task: str):
    import torch

    from trainers.finetune_model import dice_ce_loss

    if task == "seg":
        return dice_ce_loss
    if task == "cls":
        return torch.nn.functional.cross_entropy
    return lambda pred, y: torch.nn.functional.mse_loss(pred[:, 0], y)


# ------------------------------------------------------------------------------------- all folds
def run_all(args: argparse.Namespace) -> dict:
    """Every fold of every run (pretrained, scratch) that is asked for, then the report when all are done."""
    from trainers.finetune_data import labelled_cases, output_values
    from trainers.finetune_report import settings_of, write_report
    from trainers.folds import kfold, split, subject_of
    from trainers.resources import setup_processes

    try:
        setup_processes("cpu" if args.device == "cpu" else args.device, args.threads)
        targets = read_targets(args) if args.task != "seg" else None
        cases = labelled_cases(args.store, args.task, targets)
        folds = kfold([c.key for c in cases], {c.key: subject_of(c.row) for c in cases}, args.folds, seed=args.seed)
        values = output_values(cases, args.store, args.task)
    except (ValueError, KeyError, OSError) as err:
        raise RunError(str(err).strip("'\"")) from None
    weights, digest = init_weights(args)
    runfolder.write_config(args.out, {**settings_of(args), "init_sha256": digest})
    by_key = {c.key: c for c in cases}
    runs = ["scratch"] if weights is None else ["pretrained"] + (["scratch"] if args.compare_scratch else [])
    results: dict[str, list] = {run: [] for run in runs}
    with runfolder.StopSignals() as stop:
        for fold in ([args.fold] if args.fold is not None else range(args.folds)):
            train_keys, held_keys = split(folds, fold)
            for run in runs:
                say(f"{run} fold {fold}: {len(train_keys)} training, {len(held_keys)} held-out images")
                result = train_fold(args, run, fold, [by_key[k] for k in train_keys], [by_key[k] for k in held_keys],
                                    weights, values, stop)
                if result is None:
                    return {"interrupted": stop.name}
                results[run].append(result)
    done = {run: sorted(_finished(args.out / run), key=lambda r: r["fold"]) for run in runs}
    if any(len(v) < args.folds for v in done.values()):
        missing = sorted({f for run, v in done.items() for f in set(range(args.folds)) - {r["fold"] for r in v}})
        say(f"folds still to run: {missing}; rerun without --fold once they are done to gather finetune.json")
        return {}
    summary = write_report(args, done, digest)
    return {"summary": summary}


def _finished(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("fold_*/result.json"))]


def read_targets(args: argparse.Namespace) -> dict[str, float]:
    """``{store key: target}`` from ``--labels`` or, without it, the manifest column ``--target``: class
    indices for cls (sorted class names, :func:`openmind_prep.sources.targets.as_classes`), numbers for reg."""
    from openmind_prep.sources.targets import as_classes, as_numbers, load_targets

    raw = load_targets(args.store, args.target, args.labels)
    if args.task == "cls":
        indices, names = as_classes(raw)
        say(f"classes of {args.target}: {', '.join(f'{i}={n}' for i, n in enumerate(names))}")
        return {k: float(v) for k, v in indices.items()}
    return as_numbers(raw, str(args.labels or args.store))


def main(argv: list[str] | None = None) -> None:
    """Command line: bad input gives one line and exit 1 (2 for usage); SIGINT / SIGTERM save and exit 130 / 143."""
    args = parse_args(argv)
    try:
        with runfolder.hold(Path(args.out)):  # one fine-tuning per folder
            result = run_all(args)
    except RunError as err:
        print(f"trainers.finetune: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("trainers.finetune: interrupted, no checkpoint saved", file=sys.stderr, flush=True)
        sys.exit(130)
    if result.get("interrupted"):
        sys.exit(128 + {"SIGINT": 2, "SIGTERM": 15}[result["interrupted"]])
    if result.get("summary"):
        say(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
