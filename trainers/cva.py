"""Consistent View Alignment (CVA) pretraining, one file, top to bottom.

    python -m trainers.cva --store STORE --out runs/cva --config trainers/configs/tiny_cpu.py
    torchrun --nproc_per_node 8 -m trainers.cva --store STORE --out runs/r --config trainers/configs/resenc_l_cva.py

Each step: B volumes (regions of them) from the Zarr store → two overlapping views per volume cut on
the training device by ``loaders.OverlapViewSampler`` (with overlap boxes and MAE masks) → the student
sees masked views (MAE) or plain views (AE), the EMA teacher sees plain views → loss = reconstruction
(Huber on hidden voxels) + consistency of the RoI-aligned feature volumes (CVA cosine, C-CVA contrastive
or Gram) + NT-Xent on pooled vectors. Every row of the ablation ladder is a flag: ``--recon``,
``--consistency``, ``--contrastive/--no-contrastive``. ``--config FILE`` is a small Python file of
``name = value`` overrides (command-line flags still win). The run folder holds ``config.json``,
``log.jsonl``, ``loss.png`` and ``checkpoint.pt`` (exact resume: rerun the same command).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from trainers import losses
from trainers.networks import ARCHITECTURES, CVANet, build_backbone


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("trainers.cva", description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("--config", type=Path, default=None,
                   help="Python file of `name = value` overrides (see trainers/configs/); flags given here still win.")
    g = p.add_argument_group("data")
    g.add_argument("--store", type=Path, default=None,
                   help="Preprocessed Zarr store (openmind-prep preprocess): random region reads, exact data replay on resume.")
    g.add_argument("--shards", default=None,
                   help="WebDataset shard index (index.json, its folder or an fsspec URL) instead of --store: "
                        "streaming for object storage / many nodes; a resumed run continues with a fresh seeded stream.")
    g.add_argument("--out", type=Path, default=None, help="Run folder: config, log, loss curve, checkpoint.")
    g.add_argument("--patch-size", type=int, nargs="+", default=[128],
                   help="View size, 1 or 3 ints (ResEnc-L 128 as in the CVA paper, Primus-M 160; 32 on CPU).")
    g.add_argument("--batch-size", type=int, default=4,
                   help="Volumes per process per step (each gives 2 views). Lower it if the GPU runs out of memory.")
    g.add_argument("--region-scale", type=float, default=2.0,
                   help="Read regions of this × patch size per axis (room for both views); raise with large zooms.")
    g.add_argument("--min-overlap", type=float, default=0.4, help="Smallest shared fraction of the patch volume.")
    g.add_argument("--max-overlap", type=float, default=0.8, help="Largest shared fraction of the patch volume.")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="Flip/zoom/rotate/intensity augmentation of the views (off only for debugging).")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader processes reading the store.")
    g = p.add_argument_group("method (the ablation ladder)")
    g.add_argument("--recon", choices=["ae", "mae"], default="mae", help="Reconstruct plain views (ae) or masked (mae).")
    g.add_argument("--consistency", choices=["none", "cva", "c-cva", "gram"], default="cva",
                   help="Loss between RoI-aligned student and teacher feature volumes of the two views.")
    g.add_argument("--contrastive", action=argparse.BooleanOptionalAction, default=True,
                   help="NT-Xent between student and teacher pooled vectors (projector/predictor heads).")
    g.add_argument("--mask-ratio", type=float, default=0.75, help="MAE: fraction of blocks hidden from the student.")
    g.add_argument("--mask-block", type=int, default=16, help="MAE: block edge in voxels (nnssl: 16).")
    g.add_argument("--recon-weight", type=float, default=5.0, help="Weight of the Huber reconstruction.")
    g.add_argument("--consistency-weight", type=float, default=1.0, help="Weight of the consistency term.")
    g.add_argument("--contrastive-weight", type=float, default=0.1, help="Weight of NT-Xent.")
    g.add_argument("--temperature", type=float, default=0.5, help="NT-Xent / C-CVA temperature.")
    g.add_argument("--align-size", type=int, default=7, help="Edge of the RoI-aligned feature grid.")
    g.add_argument("--pool-size", type=int, default=16, help="Edge of the pooled per-stage feature volume.")
    g.add_argument("--proj-dim", type=int, default=2048, help="Projector output width (smaller for tiny runs).")
    g = p.add_argument_group("networks")
    g.add_argument("--arch", choices=ARCHITECTURES, default="resenc-l", help="Backbone; 'tiny' for CPU runs and tests.")
    g.add_argument("--drop-path", type=float, default=0.0, help="Primus stochastic depth (nnssl's Primus MAE: 0.2).")
    g.add_argument("--ema-momentum", type=float, default=0.995, help="Teacher EMA momentum (start).")
    g.add_argument("--ema-momentum-end", type=float, default=None, help="Cosine-ramp momentum to this (default: constant).")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="Total optimiser steps of the run (schedules span these).")
    g.add_argument("--lr", type=float, default=3e-4, help="Peak AdamW learning rate (per step, not scaled by batch).")
    g.add_argument("--min-lr", type=float, default=0.0, help="Final learning rate.")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay.")
    g.add_argument("--warmup-steps", type=int, default=50, help="Linear warm-up steps from 0 to --lr.")
    g.add_argument("--schedule", choices=["poly", "cosine"], default="poly", help="Decay after warm-up (poly 0.9 as nnssl).")
    g.add_argument("--clip-grad", type=float, default=12.0, help="Gradient-norm clip (0: off).")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="Seeds weights, data order, views and masks.")
    g.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda.")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default).")
    g.add_argument("--ckpt-every", type=int, default=100, help="Steps between checkpoints (and loss-curve redraws).")
    g.add_argument("--log-every", type=int, default=1, help="Steps between log lines.")
    g.add_argument("--probe-every", type=int, default=0,
                   help="Steps between evaluations of the loss on one fixed, un-augmented batch (0: off). The per-step "
                        "loss is noisy (new views and masks each step); the probe loss is the steadier progress signal.")
    g.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="Write checkpoints (--no-checkpoint for benchmarks and throw-away smoke runs).")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="Continue from OUT/checkpoint.pt when it exists.")
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="Checkpoint and exit after this step (a planned preemption; schedules keep --steps).")
    g.add_argument("--export", type=Path, default=None, help="At the end, write the backbone as an nnssl checkpoint here.")
    g.add_argument("--export-weights", choices=["student", "teacher"], default="student", help="Which backbone to export.")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; a ``--config`` file's ``name = value`` lines become defaults first (nanoGPT style)."""
    parser = get_args_parser()
    first = parser.parse_args(argv)
    if first.config is not None:
        if not first.config.is_file():
            parser.error(f"--config {first.config}: no such file")
        overrides: dict = {}
        exec(compile(first.config.read_text(), str(first.config), "exec"), {}, overrides)
        known = {a.dest for a in parser._actions}
        unknown = sorted(k for k in overrides if not k.startswith("_") and k not in known)
        if unknown:
            parser.error(f"--config {first.config}: unknown setting(s) {unknown}")
        parser.set_defaults(**{k: v for k, v in overrides.items() if not k.startswith("_")})
    args = parser.parse_args(argv)
    if (args.store is None) == (args.shards is None) or args.out is None:
        parser.error("--out and exactly one of --store / --shards are required (on the command line or in --config)")
    if len(args.patch_size) not in (1, 3):
        parser.error("--patch-size takes 1 or 3 integers")
    args.patch_size = list(args.patch_size) * 3 if len(args.patch_size) == 1 else list(args.patch_size)
    return args


def resolved_config(args: argparse.Namespace) -> dict:
    """The run's settings as plain JSON values (stored in config.json and in every checkpoint)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}


def warmup_schedule(peak: float, end: float, warmup: int, total: int, kind: str) -> np.ndarray:
    """Per-step values: linear 0 → ``peak`` over ``warmup`` steps, then poly (0.9) or cosine to ``end``."""
    warm = peak * (np.arange(warmup) + 1) / max(warmup, 1)
    t = np.arange(max(total - warmup, 0)) / max(total - warmup, 1)
    decay = (1 - t) ** 0.9 if kind == "poly" else 0.5 * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, end + (peak - end) * decay])[:total]


def momentum_schedule(start: float, end: float | None, total: int) -> np.ndarray:
    """Teacher momentum per step: constant, or a cosine ramp from ``start`` to ``end``."""
    if end is None:
        return np.full(total, start)
    return end - (end - start) * 0.5 * (1 + np.cos(np.pi * np.arange(total) / max(total, 1)))


@torch.no_grad()
def update_teacher(student: torch.nn.Module, teacher: torch.nn.Module, momentum: float) -> None:
    """EMA: teacher ← m · teacher + (1 − m) · student, parameter by parameter."""
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)


def cva_losses(out_s: dict, out_t: dict, views: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor | None,
               args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The loss terms of the selected variant and their weighted sum ``loss``."""
    terms = {"recon": losses.masked_huber(out_s["recon"], views, None if masks is None else ~masks)}
    total = args.recon_weight * terms["recon"]
    if args.consistency != "none":
        a_s = losses.align_views(out_s["volume"].float(), boxes, args.align_size)
        a_t = losses.align_views(out_t["volume"].float(), boxes, args.align_size)
        fn = {"cva": losses.aligned_cosine, "gram": losses.gram_consistency}.get(args.consistency)
        terms["consistency"] = fn(a_s, a_t) if fn else losses.contrastive_voxels(a_s, a_t, args.temperature)
        total = total + args.consistency_weight * terms["consistency"]
    if args.contrastive:
        terms["ntxent"] = losses.contrastive_vectors(out_s["vector"], out_t["vector"], args.temperature)
        total = total + args.contrastive_weight * terms["ntxent"]
    return {"loss": total, **terms}


def _rank_items(dataset, args, rank: int, world: int) -> list:
    """This rank's (index, region) reads for the whole run, epoch after epoch (a pure function of the seed).

    Step ``s`` of the run consumes items ``[s·B, (s+1)·B)``: the data position is the step.
    """
    from loaders.zarr_dataset import RegionSampler

    region = [math.ceil(args.region_scale * p) for p in args.patch_size]
    shapes = [dataset.shape(i) for i in range(len(dataset))]
    reads = RegionSampler(shapes, region, seed=args.seed, rank=rank, world_size=world)
    if len(reads) == 0:
        raise ValueError(f"{args.store}: {len(dataset)} images cannot feed {world} processes")
    items, epoch = [], 0
    while len(items) < args.steps * args.batch_size:
        reads.set_epoch(epoch)
        items.extend(reads)
        epoch += 1
    return items[: args.steps * args.batch_size]


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) the training that ``args`` describes; returns the final modules and step."""
    from loaders import OverlapViewSampler, WebDatasetStream, ZarrVolumeDataset, collate_volumes

    # ------------------------------------------------------------ setup: processes, device, seeds
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    out = Path(args.out)
    config = resolved_config(args)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # ------------------------------------------------------------ data (built in the loop section, after resume)
    if args.store is not None:
        dataset = ZarrVolumeDataset(args.store, masks=False)
        n_volumes = len(dataset)
    else:
        region = [math.ceil(args.region_scale * p) for p in args.patch_size]
        dataset = WebDatasetStream(args.shards, seed=args.seed, region_size=region, resampled=True, masks=False)
        n_volumes = sum(int(r.get("samples", 0)) for r in dataset.records.values()) or len(dataset.urls)
    steps_per_epoch = max(1, math.ceil(n_volumes / world / args.batch_size))
    sampler = OverlapViewSampler(
        args.patch_size, args.min_overlap, args.max_overlap, flip=args.augment, scale=args.augment,
        rotate=args.augment, intensity=args.augment, mask_block=args.mask_block,
        mask_ratio=args.mask_ratio if args.recon == "mae" else None)
    view_rng = torch.Generator().manual_seed(args.seed * 1000 + rank)  # views and masks of this rank
    probe = make_probe(dataset, args, device) if args.probe_every and rank == 0 else None

    # ------------------------------------------------------------ networks
    backbone = build_backbone(args.arch, args.patch_size, drop_path_rate=args.drop_path)
    student = CVANet(backbone, args.pool_size, args.proj_dim, vector_head=args.contrastive).to(device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    model = student
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if use_cuda else None, find_unused_parameters=True)

    # ------------------------------------------------------------ optimizer
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))

    # ------------------------------------------------------------ schedules (indexed by global step)
    lr_schedule = warmup_schedule(args.lr, args.min_lr, args.warmup_steps, args.steps, args.schedule)
    ema_schedule = momentum_schedule(args.ema_momentum, args.ema_momentum_end, args.steps)

    # ------------------------------------------------------------ resume
    step, ckpt_path = 0, out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        student.load_state_dict(ckpt["student"])
        teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        rng = ckpt["rng"][rank]
        torch.set_rng_state(rng["torch"])
        view_rng.set_state(rng["views"])
        if use_cuda and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        if rank == 0:
            print(f"resumed from {ckpt_path} at step {step}", flush=True)
            log_path = out / "log.jsonl"  # drop lines of steps after the checkpoint (a kill between checkpoints)
            if log_path.exists():
                keep = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
                log_path.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------ loop
    if args.store is not None:  # this rank's reads for the whole run; step s reads items [s·B, (s+1)·B)
        reads = {"sampler": _rank_items(dataset, args, rank, world)[step * args.batch_size:]}
    else:  # an infinite resampled stream, seeded by the start step
        dataset.set_epoch(step)
        reads = {}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, collate_fn=collate_volumes, num_workers=args.num_workers,
        pin_memory=use_cuda, multiprocessing_context="spawn" if args.num_workers else None, **reads)
    batches = iter(loader)
    stop = min(args.steps, args.stop_at_step or args.steps)
    bar = tqdm(total=stop, initial=step, unit="step", desc="cva", disable=rank != 0, dynamic_ncols=True)
    ctx = dict(model=model, student=student, teacher=teacher, sampler=sampler, view_rng=view_rng, batches=batches,
               optimizer=optimizer, lr_schedule=lr_schedule, ema_schedule=ema_schedule, device=device, args=args,
               rank=rank, world=world, out=out, probe=probe, bar=bar)
    while step < stop:
        epoch = step // steps_per_epoch
        step = train_one_epoch(**ctx, epoch=epoch, start=step, end=min((epoch + 1) * steps_per_epoch, stop),
                               save=lambda s: save_checkpoint(ckpt_path, student, teacher, optimizer, s, view_rng,
                                                              config, rank, world, use_cuda))
    bar.close()
    del ctx, batches  # shut the DataLoader workers down
    if step % args.ckpt_every:  # not saved by the loop yet
        save_checkpoint(ckpt_path, student, teacher, optimizer, step, view_rng, config, rank, world, use_cuda)
    if rank == 0:
        plot_losses(out / "log.jsonl", out / "loss.png")
        if args.export is not None and step >= args.steps:
            from trainers.export import save_nnssl_checkpoint

            source = student if args.export_weights == "student" else teacher
            save_nnssl_checkpoint(args.export, source.backbone, args.arch, args.patch_size, config)
            print(f"exported {args.export_weights} backbone to {args.export}", flush=True)
    return {"student": student, "teacher": teacher, "step": step}


def make_probe(dataset, args: argparse.Namespace, device: torch.device):
    """One fixed batch of views (the first ``batch_size`` volumes, no augmentation, fixed views and masks)."""
    from loaders import OverlapViewSampler, ZarrVolumeDataset, collate_volumes, to_device

    if isinstance(dataset, ZarrVolumeDataset):
        samples = [dataset[i] for i in range(min(args.batch_size, len(dataset)))]
    else:  # a fresh pass over the stream; the training loader iterates its own copy
        samples = [s for _, s in zip(range(args.batch_size), iter(dataset))]
    vols = to_device(collate_volumes(samples), device)["image"]
    sampler = OverlapViewSampler(args.patch_size, args.min_overlap, args.max_overlap, flip=False, scale=False,
                                 rotate=False, intensity=False, mask_block=args.mask_block,
                                 mask_ratio=args.mask_ratio if args.recon == "mae" else None)
    return sampler(vols, generator=torch.Generator().manual_seed(args.seed + 12345))


@torch.no_grad()
def probe_loss(student, teacher, probe, args: argparse.Namespace) -> float:
    """The loss of the current networks on the fixed probe batch (no RNG drawn: exact resume is kept)."""
    was_training = student.training
    student.eval()
    views, masks = probe.views, probe.masks
    out_s = student(views if masks is None else views * masks, predict=True)
    out_t = teacher(views, predict=False)
    loss = cva_losses(out_s, out_t, views, probe.boxes, masks, args)["loss"]
    student.train(was_training)
    return float(loss)


def train_one_epoch(*, model, student, teacher, sampler, view_rng, batches, optimizer, lr_schedule, ema_schedule,
                    device, args, rank, world, out, epoch, start, end, save, probe=None, bar=None) -> int:
    """Steps ``start`` .. ``end`` − 1 of the run; returns the next step."""
    from loaders import to_device

    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log = (out / "log.jsonl").open("a") if rank == 0 else None
    t_last = time.perf_counter()
    for step in range(start, end):
        # data: volumes → device → two views per volume, boxes, masks
        vols = to_device(next(batches), device)["image"]
        pair = sampler(vols, generator=view_rng)
        views, boxes, masks = pair.views, pair.boxes, pair.masks
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_data = time.perf_counter() - t_last

        # forward: student on masked (MAE) or plain (AE) views, teacher on plain views
        for group in optimizer.param_groups:
            group["lr"] = float(lr_schedule[step])
        with amp:
            out_s = model(views if masks is None else views * masks, predict=True)
            with torch.no_grad():
                out_t = teacher(views, predict=False)
            terms = cva_losses(out_s, out_t, views, boxes, masks, args)

        # backward, clip, step, then the EMA teacher
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), args.clip_grad or float("inf"))
        optimizer.step()
        update_teacher(student, teacher, float(ema_schedule[step]))

        # log (rank 0), checkpoint (all ranks take part)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if log is not None and (step + 1) % args.log_every == 0:
            mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            row = {"step": step + 1, "epoch": epoch, **{k: float(v.detach()) for k, v in terms.items()},
                   "grad_norm": float(grad_norm), "lr": float(lr_schedule[step]),
                   "momentum": float(ema_schedule[step]), "samples_per_s": args.batch_size * world / dt,
                   "step_s": dt, "data_wait_frac": t_data / dt, "peak_mem_bytes": int(mem)}
            if probe is not None and (step == 0 or (step + 1) % args.probe_every == 0):
                row["probe_loss"] = probe_loss(student, teacher, probe, args)
            log.write(json.dumps(row) + "\n")
            log.flush()
        if bar is not None:  # progress on the console (rank 0; disabled elsewhere)
            bar.update(1)
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}", pairs_per_s=f"{args.batch_size * world / dt:.1f}")
        if (step + 1) % args.ckpt_every == 0:
            save(step + 1)
            if rank == 0:
                plot_losses(out / "log.jsonl", out / "loss.png")
    if log is not None:
        log.close()
    return end


def save_checkpoint(path: Path, student, teacher, optimizer, step: int, view_rng: torch.Generator, config: dict,
                    rank: int, world: int, use_cuda: bool) -> None:
    """Everything exact resume needs; RNG states of every rank are gathered to rank 0, which writes.

    Each rank also reports a sha256 of its student and teacher weights (``replicas``): DDP replicas in
    sync have equal digests. With ``--no-checkpoint`` nothing is gathered, hashed or written (every
    rank sees the same config, so all skip the collective together).
    """
    if not config["checkpoint"]:
        return
    digest = hashlib.sha256()
    for module in (student, teacher):
        for t in module.state_dict().values():
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    rng = {"torch": torch.get_rng_state(), "views": view_rng.get_state(),
           "cuda": torch.cuda.get_rng_state() if use_cuda else None, "digest": digest.hexdigest()}
    rngs = [rng]
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, rng)
    if rank == 0:
        ckpt = {"student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng": rngs, "replicas": [r.pop("digest") for r in rngs], "config": config}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(ckpt, tmp)
        tmp.replace(path)
    if world > 1:
        dist.barrier()


def plot_losses(log_path: Path, png_path: Path) -> None:
    """Draw every loss term of the JSON-lines log against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.exists() else []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "recon", "consistency", "ntxent", "probe_loss"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label="loss on a fixed batch" if key == "probe_loss" else key,
                    lw=2 if key == "probe_loss" else 1, marker="o" if key == "probe_loss" else None, ms=3)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"CVA pretraining ({log_path.parent.name})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
