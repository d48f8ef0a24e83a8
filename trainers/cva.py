"""Consistent View Alignment (CVA) pretraining, one file, top to bottom.

    python -m trainers.cva --store STORE --out runs/cva --config tiny_cpu
    torchrun --nproc_per_node 8 -m trainers.cva --store STORE --out runs/r --config resenc_l_cva

Each step: B volumes (regions of them) from the Zarr store or WebDataset shards (one batch source,
:func:`loaders.batches.batch_source`) → two overlapping views per volume cut on the training device by
``loaders.OverlapViewSampler`` (with overlap boxes and MAE masks) → the student sees masked views (MAE)
or plain views (AE), the EMA teacher sees plain views → loss = reconstruction (Huber on hidden voxels)
+ consistency of the RoI-aligned feature volumes (CVA cosine, C-CVA contrastive or Gram) + NT-Xent on
pooled vectors. Every row of the ablation ladder is a flag: ``--recon``, ``--consistency``,
``--contrastive/--no-contrastive``. ``--config`` takes TOML files of ``name = value`` settings
(:mod:`trainers.configs`; flags still win). The run folder (:mod:`trainers.runfolder`) holds ``config.json``,
``log.jsonl``, ``loss.png`` and ``checkpoint.pt`` (exact resume: rerun the same command); Ctrl-C or SIGTERM
saves a checkpoint and exits after the current step."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from openmind_prep import __version__
from openmind_prep.sources.retry import parse_duration
from trainers import architectures, cli_args, configs, runfolder, sanity
from trainers.checks import inputs_problem, problems
from trainers.method import cva_losses, forward_pair, init_stage2, uses_heads
from trainers.optim import OPTIMIZERS
from trainers.resources import cpu_refusal, gpu_refusal, setup_processes
from trainers.runfolder import RunError, say
from trainers.settings import Settings, defaults, resolve

if TYPE_CHECKING:  # numpy and torch load when a run starts, not for --help
    import numpy as np


def get_args_parser() -> cli_args.ArgumentParser:
    """The trainer's flags, each with when to change it; defaults are :class:`~trainers.settings.Settings`'
    (``--help`` shows them and imports no torch)."""
    p = cli_args.ArgumentParser("trainers.cva", defaults=defaults(), description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s (openmind-prep {__version__})")
    p.add_argument("--config", action="append", metavar="NAME_OR_FILE",
                   help=f"TOML file of `name = value` settings, or a shipped one by name ({', '.join(configs.names())}). "
                        "Repeat to merge in order (a later file wins); flags given here win over all files.")
    p.add_argument("--dry-run", action="store_true",
                   help="Print every resolved setting (weights, losses, optimiser values) as JSON and exit; builds nothing.")
    g = p.add_argument_group("data")
    g.add_argument("--store", type=Path,
                   help="Preprocessed Zarr store (openmind-prep preprocess): random region reads, exact data replay on resume.")
    g.add_argument("--shards",
                   help="WebDataset shard index (index.json, its folder or an fsspec URL) instead of --store: "
                        "streaming for object storage / many nodes; a resumed run continues with a fresh seeded stream.")
    g.add_argument("--out", type=Path, help="Run folder: config, log, loss curve, checkpoint.")
    g.add_argument("--patch-size", type=int, nargs="+",
                   help="View size, 1 or 3 ints (ResEnc-L 128 as in the CVA paper, Primus-M 160; 32 on CPU).")
    g.add_argument("--batch-size", type=int,
                   help="Volumes per process per step (each gives 2 views); default --global-batch-size / processes, "
                        "else 4. Lower it if the GPU runs out of memory.")
    g.add_argument("--global-batch-size", type=int,
                   help="Volumes per step over all processes (nnssl's batch size), split evenly across torchrun's "
                        "ranks (refused when not divisible); the shipped configs state the reference's.")
    g.add_argument("--region-scale", type=float,
                   help="Read regions of this × patch size per axis (room for both views); raise with large zooms.")
    g.add_argument("--min-overlap", type=float, help="Smallest shared fraction of the patch volume.")
    g.add_argument("--max-overlap", type=float, help="Largest shared fraction of the patch volume.")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="Flip/zoom/rotate/intensity augmentation of the views (off only for debugging).")
    g.add_argument("--view-augment", choices=["reference", "per-view"],
                   help="reference: the fork's views, one mirror/zoom (p 0.2, 0.7-1.4)/rotation (p 0.2, 0-2π) per pair, "
                        "so views differ by translation only; per-view: mirror and zoom drawn per view, rotation ±30°.")
    g.add_argument("--num-workers", type=int, help="DataLoader processes reading the store.")
    g = p.add_argument_group("method (the ablation ladder)")
    g.add_argument("--recon", choices=["ae", "mae"], help="Reconstruct plain views (ae) or masked (mae).")
    g.add_argument("--consistency", choices=["none", "cva", "c-cva", "gram"],
                   help="Loss between RoI-aligned student and teacher feature volumes of the two views.")
    g.add_argument("--contrastive", action=argparse.BooleanOptionalAction,
                   help="NT-Xent between student and teacher pooled vectors (projector/predictor heads).")
    g.add_argument("--mask-ratio", type=float, help="MAE: fraction of blocks hidden from the student.")
    g.add_argument("--mask-block", type=int, help="MAE: block edge in voxels (nnssl: 16).")
    g.add_argument("--stage", type=int, choices=[1, 2],
                   help="Ladder stage for the rung's defaults (default: 2 with --init-from, else 1; stage-2 configs say 2).")
    g.add_argument("--recon-loss", choices=["huber", "mse"],
                   help="Reconstruction on hidden voxels (default: nnssl's mse for the plain MAE from scratch, else the "
                        "fork's huber).")
    g.add_argument("--recon-weight", type=float, help="Weight of the reconstruction (default: mse 1, huber 5).")
    g.add_argument("--consistency-weight", type=float,
                   help="Weight of the consistency term (default: the fork's for the rung and stage: cva 1.0 in stage 2, "
                        "0.5 from scratch; c-cva 0.2 in stage 2, 0.5 from scratch; gram 2.0; ae 0.5).")
    g.add_argument("--gram-norm", choices=["fork", "cosine"],
                   help="gram: the fork's mean (G_s - G_t)² (a term ~V/C², two orders below the cosine's) or "
                        "cosine: 2 - 2 cos(G_s, G_t), the CVA cosine's form and scale on the Gram matrices.")
    g.add_argument("--voxel-head", action=argparse.BooleanOptionalAction,
                   help="Every pooled voxel through the projector (both nets) and predictor (student) before the "
                        "consistency term, as the fork's use_projector=True; --no-voxel-head compares raw features.")
    g.add_argument("--contrastive-weight", type=float, help="Weight of NT-Xent.")
    g.add_argument("--temperature", type=float, help="NT-Xent / C-CVA temperature.")
    g.add_argument("--align-size", type=int, help="Edge of the RoI-aligned feature grid.")
    g.add_argument("--pool-size", type=int, help="Edge of the pooled per-stage feature volume.")
    g.add_argument("--proj-dim", type=int, help="Projector output width (smaller for tiny runs).")
    g = p.add_argument_group("networks")
    g.add_argument("--arch", help=f"Backbone ({', '.join(architectures.names())}); 'tiny' for CPU runs and tests.")
    g.add_argument("--force", action="store_true",
                   help="Train resenc-l / primus-m on a CPU anyway (refused by default, with a memory estimate).")
    g.add_argument("--drop-path", type=float, help="Primus stochastic depth (nnssl's Primus MAE: 0.2).")
    g.add_argument("--init-from",
                   help="Stage 2: start from a stage-1 run folder, its checkpoint.pt, an nnssl-format export (ours or "
                        "nnssl's) or hf://owner/repo[/file] (e.g. hf://AnonRes/ResEncL-OpenMind-MAE): backbone loaded "
                        "strictly, heads fresh, teacher = student, schedules from step 0. Ignored when resuming.")
    g.add_argument("--init-recon-head", action=argparse.BooleanOptionalAction,
                   help="With --init-from, load the reconstruction head (.seg_layers.) too; the fork leaves it fresh.")
    g.add_argument("--hub-endpoint", help="Hugging Face endpoint for hf:// (default: HF_ENDPOINT or the hub).")
    g.add_argument("--hub-deadline", type=parse_duration, metavar="DURATION",
                   help="Give up fetching --init-from hf:// after this long, retries included (e.g. 90s, 10m).")
    g.add_argument("--ema-momentum", type=float,
                   help="Teacher EMA momentum (start). Default the fork's: 0.995, 0 (teacher = student) with --recon ae.")
    g.add_argument("--ema-momentum-end", type=float, help="Cosine-ramp momentum to this (default: constant).")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="Total optimiser steps of the run (schedules span these).")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd (nnssl's for residual U-Nets: momentum 0.99 Nesterov) or adamw (nnssl's for Primus); "
                        "default: the reference's for --arch (resenc-l sgd, primus-m adamw, tiny adamw).")
    g.add_argument("--lr", type=float,
                   help="Peak learning rate per step, not scaled by batch (default: sgd 1e-2, 5e-3 for the ae and "
                        "from-scratch c-cva rungs as the fork; adamw 3e-4).")
    g.add_argument("--min-lr", type=float, help="Final learning rate.")
    g.add_argument("--weight-decay", type=float, help="Weight decay (default: sgd 3e-5, adamw 5e-2).")
    g.add_argument("--momentum", type=float, help="SGD (Nesterov) momentum.")
    g.add_argument("--warmup-steps", type=int,
                   help="Linear warm-up steps from 0 to --lr (default: sgd 0, adamw 2500 = the fork's 10 epochs).")
    g.add_argument("--schedule", choices=["poly", "cosine"], help="Decay after warm-up (poly 0.9 as nnssl).")
    g.add_argument("--clip-grad", type=float,
                   help="Gradient-norm clip, 0: off (default: the reference's, resenc-l/tiny 12, primus-m 1).")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help="Seeds weights, data order, views and masks.")
    g.add_argument("--device", help="auto (cuda if present), cpu or cuda.")
    g.add_argument("--threads", type=int, help="CPU threads for torch (0: torch's default).")
    g.add_argument("--ckpt-every", type=int, help="Steps between checkpoints (and loss-curve redraws).")
    g.add_argument("--log-every", type=int, help="Steps between log lines.")
    g.add_argument("--probe-every", type=int,
                   help="Steps between evaluations of the loss on one fixed, un-augmented batch (0: off). The per-step "
                        "loss is noisy (new views and masks each step); the probe loss is the steadier progress signal.")
    g.add_argument("--checkpoint", action=argparse.BooleanOptionalAction,
                   help="Write checkpoints (--no-checkpoint for benchmarks and throw-away smoke runs).")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction,
                   help="Continue from OUT/checkpoint.pt (or checkpoint.prev.pt if the latest is damaged) when it exists.")
    g.add_argument("--stop-at-step", type=int,
                   help="Checkpoint and exit after this step (a planned preemption; schedules keep --steps).")
    g.add_argument("--export", type=Path, help="At the end, write the backbone as an nnssl checkpoint here.")
    g.add_argument("--export-weights", choices=["student", "teacher"], help="Which backbone to export.")
    return p


def parse_args(argv: list[str] | None = None, *, dry_run: bool = False) -> Settings:
    """Flags over the merged ``--config`` files, resolved (:func:`trainers.settings.resolve`) and checked; a bad
    value exits 2 with one line. A run needs ``--out`` and its data; a ``dry_run`` does not."""
    parser = get_args_parser()
    given = cli_args.given_settings(parser, argv)
    given.pop("dry_run", None)
    try:
        settings = resolve(given)
    except ValueError as err:  # SettingsError, an unknown architecture
        parser.error(str(err))
    problem = next(iter(problems(settings)), None) or (None if dry_run else inputs_problem(settings))
    if problem:
        parser.error(problem)
    return settings


def warmup_schedule(peak: float, end: float, warmup: int, total: int, kind: str) -> np.ndarray:
    """Per-step values: linear 0 → ``peak`` over ``warmup`` steps, then poly (0.9) or cosine to ``end``."""
    import numpy as np

    warm = peak * (np.arange(warmup) + 1) / max(warmup, 1)
    t = np.arange(max(total - warmup, 0)) / max(total - warmup, 1)
    decay = (1 - t) ** 0.9 if kind == "poly" else 0.5 * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, end + (peak - end) * decay])[:total]


def momentum_schedule(start: float, end: float | None, total: int) -> np.ndarray:
    """Teacher momentum per step: constant, or a cosine ramp from ``start`` to ``end``."""
    import numpy as np

    if end is None:
        return np.full(total, start)
    return end - (end - start) * 0.5 * (1 + np.cos(np.pi * np.arange(total) / max(total, 1)))


def update_teacher(student, teacher, momentum: float) -> None:
    """EMA: teacher ← m · teacher + (1 − m) · student, parameter by parameter."""
    import torch

    with torch.no_grad():
        for p_s, p_t in zip(student.parameters(), teacher.parameters()):
            p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)


def view_sampler(args: Settings, augment: bool):
    """The overlapping-view sampler of this run (``augment=False``: the fixed probe batch's)."""
    from loaders import OverlapViewSampler

    return OverlapViewSampler(args.patch_size, args.min_overlap, args.max_overlap, flip=augment, scale=augment,
                              rotate=augment, intensity=augment, mask_block=args.mask_block,
                              shared_spatial=args.view_augment == "reference",
                              max_rotation_deg=180.0 if args.view_augment == "reference" else 30.0,
                              mask_ratio=args.mask_ratio if args.recon == "mae" else None)


def train(args: Settings) -> dict:
    """Run (or resume) the training that ``args`` describes; returns the final modules and step.

    ``args`` is a resolved :class:`~trainers.settings.Settings` (:func:`parse_args`, or
    ``trainers.settings.resolve({...})`` from Python). Raises :class:`~trainers.runfolder.RunError` (one line).

    ``result["interrupted"]`` names the signal (``"SIGINT"``) when one stopped the run (checkpoint saved).
    """
    import torch

    from loaders import to_device
    from loaders.batches import batch_source
    from trainers.architectures import build_backbone
    from trainers.networks import CVANet
    from trainers.optim import build_optimizer

    # ------------------------------------------------------------ setup: processes, device, seeds, run folder
    problem = next(iter(problems(args)), None)  # settings built in Python skip parse_args' checks
    if problem:
        raise RunError(problem)
    try:
        procs = setup_processes(args.device, args.threads)
    except ValueError as err:  # a device this machine does not have
        raise RunError(str(err)) from None
    if procs.world != args.world:  # the settings split the global batch for this many processes
        raise RunError(f"the settings were resolved for {args.world} process(es), this run has {procs.world}")
    heads = args.proj_dim if uses_heads(args) else 0
    if procs.cuda:  # weights alone above the GPU's memory: refused even with --force
        refusal = gpu_refusal(args.arch, heads, torch.cuda.get_device_properties(procs.device).total_memory / 2**30)
        if refusal:
            raise RunError(refusal)
    refusal = None if procs.cuda else cpu_refusal(args.arch, args.patch_size, args.batch_size, heads)
    if refusal and not args.force:
        raise RunError(refusal)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    out, config = Path(args.out), args.as_json()  # config.json is written once the inputs have checked out

    # ------------------------------------------------------------ data: one batch source, store or shards
    region = [math.ceil(args.region_scale * p) for p in args.patch_size]
    try:
        source = batch_source(store=args.store, shards=args.shards, batch_size=args.batch_size, region_size=region,
                              seed=args.seed, rank=procs.rank, world=procs.world, num_workers=args.num_workers,
                              pin_memory=procs.cuda)
    except ValueError as err:
        raise RunError(str(err)) from None
    sampler = view_sampler(args, augment=args.augment)
    view_rng = torch.Generator().manual_seed(args.seed * 1000 + procs.rank)  # views and masks of this rank
    probe = None
    if args.probe_every and procs.rank == 0:  # one fixed batch: the first volumes, fixed views and masks
        vols = to_device(source.first_batch(args.batch_size), procs.device)["image"]
        probe = view_sampler(args, augment=False)(vols, generator=torch.Generator().manual_seed(args.seed + 12345))

    # ------------------------------------------------------------ networks
    backbone = build_backbone(args.arch, args.patch_size, drop_path_rate=args.drop_path)
    student = CVANet(backbone, args.pool_size, args.proj_dim, heads=uses_heads(args)).to(procs.device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    model = student
    if procs.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[procs.device.index] if procs.cuda else None, find_unused_parameters=True)

    # ------------------------------------------------------------ optimizer
    optimizer = build_optimizer(student.parameters(), args)  # trainers.optim: SGD or AdamW, the reference's values

    # ------------------------------------------------------------ schedules (indexed by global step)
    lr_schedule = warmup_schedule(args.lr, args.min_lr, args.warmup_steps, args.steps, args.schedule)
    ema_schedule = momentum_schedule(args.ema_momentum, args.ema_momentum_end, args.steps)

    # ------------------------------------------------------------ resume
    state = dict(student=student, teacher=teacher, optimizer=optimizer, source=source, view_rng=view_rng,
                 config=config, procs=procs)
    ckpt, path = runfolder.load_checkpoint(out, report=say if procs.rank == 0 else None) if args.resume else (None, None)
    step = 0 if ckpt is None else runfolder.restore(ckpt, **state)
    if ckpt is None and args.init_from:  # stage 2 of a fresh run: backbone from stage 1, heads fresh, step 0
        try:
            n = init_stage2(student, teacher, args, out, procs.rank, procs.world)
        except ValueError as err:
            raise RunError(f"--init-from {err}") from None
        if procs.rank == 0:
            fresh = "" if args.init_recon_head else " (the reconstruction head .seg_layers. fresh, as the fork)"
            say(f"initialised {n} backbone tensors from {args.init_from}{fresh}")
    if procs.rank == 0:
        if ckpt is not None:
            say(f"resumed from {path} at step {step}")
        else:
            say(f"no checkpoint in {out}: starting at step 1" if args.resume else
                f"--no-resume: starting at step 1 (checkpoints in {out} will be replaced)")
        runfolder.write_config(out, config)
        message = runfolder.start_log(out, step)
        if message:
            say(message)

    # ------------------------------------------------------------ loop
    stop_at = min(args.steps, args.stop_at_step or args.steps)
    log = runfolder.StepLog(out, args.log_every, total=stop_at, initial=step, enabled=procs.rank == 0,
                            probe=(lambda: probe_loss(student, teacher, probe, args)) if probe is not None else None,
                            probe_every=args.probe_every)
    batches = iter(source)
    with runfolder.StopSignals() as stop:
        try:
            while step < stop_at and not stop.agreed(procs.device, procs.world):
                epoch = step // source.steps_per_epoch
                end = min((epoch + 1) * source.steps_per_epoch, (step // args.ckpt_every + 1) * args.ckpt_every,
                          stop_at)
                step = train_one_epoch(model, teacher, batches, sampler, view_rng, optimizer, lr_schedule,
                                       ema_schedule, epoch, range(step, end), args, procs, log, stop)
                if step % args.ckpt_every == 0 or step == stop_at or stop.agreed(procs.device, procs.world):
                    runfolder.save(out, step, **state)
                    if procs.rank == 0:
                        runfolder.plot_losses(out)
        finally:
            log.close()
            batches.close()  # shut the DataLoader workers down
    result = {"student": student, "teacher": teacher, "step": step, "interrupted": stop.name}
    if stop.name:
        if procs.rank == 0:
            saved = f"checkpoint saved to {out / runfolder.CHECKPOINT}" if args.checkpoint else "no checkpoint (--no-checkpoint)"
            say(f"{stop.name} at step {step}: {saved}; rerun the same command to resume")
        return result
    if procs.rank == 0 and args.export is not None and step >= args.steps:
        from trainers.export import save_nnssl_checkpoint

        source_net = student if args.export_weights == "student" else teacher
        try:
            save_nnssl_checkpoint(args.export, source_net.backbone, args.arch, args.patch_size, config)
        except (OSError, RuntimeError) as err:  # the run itself is saved: a rerun only exports
            raise RunError(f"--export {args.export}: cannot write it ({err}); fix it and rerun to export") from None
        say(f"exported {args.export_weights} backbone to {args.export}")
    return result


def probe_loss(student, teacher, probe, args: Settings) -> float:
    """The loss of the current networks on the fixed probe batch (no RNG drawn: exact resume is kept)."""
    import torch

    was_training = student.training
    student.eval()
    views, masks = probe.views, probe.masks
    with torch.no_grad():
        out_s, out_t = forward_pair(student, teacher, views, masks, args)
        loss = cva_losses(out_s, out_t, views, probe.boxes, masks, args)["loss"]
    student.train(was_training)
    return float(loss)


def train_one_epoch(model, teacher, batches, sampler, view_rng, optimizer, lr_schedule, ema_schedule,
                    epoch: int, steps: range, args: Settings, procs, log, stop) -> int:
    """The ``steps`` of one epoch (or up to a checkpoint, or until a stop signal); returns the next step."""
    import torch

    from loaders import to_device

    device, student = procs.device, getattr(model, "module", model)  # the network inside DDP
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=procs.cuda)
    t_last = time.perf_counter()
    for step in steps:
        if step > steps.start and stop.agreed(device, procs.world):  # SIGINT / SIGTERM: end after a whole step
            return step
        # data: volumes → device → two views per volume, boxes, masks
        try:
            vols, failure = to_device(next(batches), device)["image"], None
        except (OSError, ValueError, RuntimeError, KeyError) as err:  # damaged data: one line, not a traceback
            failure = f"cannot read the data of step {step + 1}: {str(err).strip().splitlines()[-1]}"
        stop.raise_if_any_failed(failure, step + 1, device, procs.world)  # every rank stops, none waits in a collective
        pair = sampler(vols, generator=view_rng)
        views, boxes, masks = pair.views, pair.boxes, pair.masks
        if procs.cuda:
            torch.cuda.synchronize(device)
        t_data = time.perf_counter() - t_last

        # forward: student on masked (MAE) or plain (AE) views, teacher on plain views
        for group in optimizer.param_groups:
            group["lr"] = float(lr_schedule[step])
        with amp:
            out_s, out_t = forward_pair(model, teacher, views, masks, args)
            terms = cva_losses(out_s, out_t, views, boxes, masks, args)

        # backward, clip, step, then the EMA teacher
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), args.clip_grad or float("inf"))
        failure = sanity.nonfinite(step + 1, terms, grad_norm)  # NaN / inf: stop before the weights change
        if failure:
            failure += f": stopped before updating the weights, the last checkpoint in {args.out} is kept (lower --lr)"
        stop.raise_if_any_failed(failure, step + 1, device, procs.world, other="met a non-finite loss or gradient at")
        optimizer.step()
        update_teacher(student, teacher, float(ema_schedule[step]))

        # log (rank 0 writes)
        if procs.cuda:
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        mem = (torch.cuda.max_memory_allocated(device) if procs.cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        log(step + 1, {"epoch": epoch, **{k: float(v.detach()) for k, v in terms.items()},
                       "grad_norm": float(grad_norm), "lr": float(lr_schedule[step]),
                       "momentum": float(ema_schedule[step]), "samples_per_s": args.batch_size * procs.world / dt,
                       "step_s": dt, "data_wait_frac": t_data / dt, "peak_mem_bytes": int(mem)})
    return steps.stop


def main(argv: list[str] | None = None) -> None:
    """Command line: bad input gives one line and exit 1 (usage: 2); SIGINT / SIGTERM exit 130 / 143 after saving.
    ``--dry-run`` prints the resolved settings as JSON and exits 0."""
    dry_run = "--dry-run" in (sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, dry_run=dry_run)
    if dry_run:
        print(json.dumps(args.as_json(), indent=2))
        return
    import torch
    import torch.distributed as dist

    try:
        with runfolder.hold(Path(args.out)):  # one trainer per run folder
            result = train(args)
    except (RunError, OSError, torch.OutOfMemoryError) as err:  # OSError: the run folder's file system
        print(f"trainers.cva: error: {runfolder.error_line(err, args.out)}", file=sys.stderr, flush=True)
        if dist.is_initialized():  # DDP: leave without torch's teardown, which can abort once a peer has left
            os._exit(1)
        sys.exit(1)
    except KeyboardInterrupt:  # before the loop's handlers were set, or a second Ctrl-C
        print("trainers.cva: interrupted, no checkpoint saved", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result["interrupted"]:
        sys.exit(128 + {"SIGINT": 2, "SIGTERM": 15}[result["interrupted"]])


if __name__ == "__main__":
    main()
