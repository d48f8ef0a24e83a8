"""One training step of each rung of the ladder, with the cost of each part, side by side.

    python benchmarks/rungs.py                      # tiny 32³ (every rung) + ResEnc-L / Primus-M 64³ (two rungs), CPU
    python benchmarks/rungs.py --device cuda --big-patch 160 --batch 4

For each rung: wall time of the student forward, the teacher forward (skipped when no term uses it),
each loss term (reconstruction, consistency, NT-Xent), backward and optimiser step, and the value of
each term, on the same synthetic batch (two overlapping views per volume, the reference view recipe,
MAE masks). Timings of the first step after a warm-up step; one process, no data loading.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from loaders import OverlapViewSampler
from trainers import cva, losses
from trainers.method import consistency_term, uses_heads
from trainers.architectures import build_backbone
from trainers.networks import CVANet
from trainers.optim import build_optimizer
from trainers.primus_mae import PrimusMAE, keep_indices

LADDER = [  # (name, flags): the seed's table and the fork's extra rungs
    ("AE", ["--recon", "ae", "--consistency", "none", "--no-contrastive"]),
    ("MAE", ["--consistency", "none", "--no-contrastive"]),
    ("MAE+con", ["--consistency", "none", "--contrastive"]),
    ("MAE+CVA", ["--consistency", "cva", "--no-contrastive"]),
    ("MAE+CVA+con", ["--consistency", "cva", "--contrastive"]),
    ("MAE+C-CVA+con", ["--consistency", "c-cva", "--contrastive"]),
    ("MAE+Gram+con", ["--consistency", "gram", "--contrastive"]),
    ("MAE+Gram(cos)+con", ["--consistency", "gram", "--gram-norm", "cosine", "--contrastive"]),
    ("AE+CVA+con", ["--recon", "ae", "--consistency", "cva", "--contrastive"]),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(args: argparse.Namespace, device: torch.device, batch: int) -> dict[str, float]:
    """Time one step (after one warm-up step) of the rung ``args`` describes."""
    torch.manual_seed(0)
    student = CVANet(build_backbone(args.arch, args.patch_size), args.pool_size, args.proj_dim,
                     heads=uses_heads(args)).to(device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    optimizer = build_optimizer(student.parameters(), args)
    vols = torch.randn(batch, 1, *[int(p * 1.5) for p in args.patch_size], device=device)
    sampler = cva.view_sampler(args, augment=True)
    assert isinstance(sampler, OverlapViewSampler)
    pair = sampler(vols, generator=torch.Generator().manual_seed(0))
    views, boxes, masks = pair.views, pair.boxes, pair.masks
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    row: dict[str, float] = {}
    for _ in range(2):  # warm-up, then the timed step
        t = {}
        _sync(device)
        t0 = time.perf_counter()
        with amp:
            # the student and the teacher timed apart (the same calls as trainers.method.forward_pair)
            voxel_head = args.voxel_head and args.consistency != "none"
            kw = dict(voxel_head=voxel_head, vector=args.contrastive)
            if masks is not None and isinstance(student.backbone, PrimusMAE):
                out_s = student(views, predict=True, keep=keep_indices(masks), **kw)
            else:
                out_s = student(views if masks is None else views * masks, predict=True, **kw)
            _sync(device)
            t["student_fwd"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out_t = None
            if args.consistency != "none" or args.contrastive:
                with torch.no_grad():
                    out_t = teacher(views, predict=False, **kw)
            _sync(device)
            t["teacher_fwd"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            recon = losses.masked_huber(out_s["recon"], views, None if masks is None else ~masks)
            _sync(device)
            t["recon"] = time.perf_counter() - t0
            total = args.recon_weight * recon
            values = {"recon": float(recon.detach())}
            if args.consistency != "none":
                t0 = time.perf_counter()
                a_s = losses.align_views(out_s["volume"].float(), boxes, args.align_size)
                a_t = losses.align_views(out_t["volume"].float(), boxes, args.align_size)
                c = consistency_term(a_s, a_t, args)
                _sync(device)
                t["consistency"] = time.perf_counter() - t0
                total = total + args.consistency_weight * c
                values["consistency"] = float(c.detach())
            if args.contrastive:
                t0 = time.perf_counter()
                n = losses.contrastive_vectors(out_s["vector"], out_t["vector"], args.temperature)
                _sync(device)
                t["ntxent"] = time.perf_counter() - t0
                total = total + args.contrastive_weight * n
                values["ntxent"] = float(n.detach())
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), args.clip_grad or float("inf"))
        optimizer.step()
        _sync(device)
        t["backward_step"] = time.perf_counter() - t0
        row = {**t, **{f"value_{k}": v for k, v in values.items()}}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=2, help="Volumes per step (2 views each; NT-Xent needs 2 or more).")
    p.add_argument("--tiny-patch", type=int, default=32)
    p.add_argument("--big-patch", type=int, default=64)
    p.add_argument("--big", nargs="*", default=["resenc-l", "primus-m"], help="Big architectures to time.")
    p.add_argument("--big-rungs", nargs="*", default=["MAE", "MAE+CVA+con"])
    p.add_argument("--tiny-rungs", nargs="*", default=[name for name, _ in LADDER], help="Tiny rungs to time.")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    runs = [("tiny", a.tiny_patch, name, flags, ["--config", "tiny_cpu"]) for name, flags in LADDER
            if name in a.tiny_rungs]
    for arch in a.big:
        cfg = {"resenc-l": "resenc_l_cva", "primus-m": "primus_m_cva"}[arch]
        extra = ["--pool-size", str(a.big_patch // 8)] if arch == "primus-m" else []
        runs += [(arch, a.big_patch, name, flags, ["--config", cfg, *extra]) for name, flags in LADDER
                 if name in a.big_rungs]
    cols = ["student_fwd", "teacher_fwd", "recon", "consistency", "ntxent", "backward_step"]
    print(f"device {device}, threads {a.threads}, batch {a.batch} volume(s) = {2 * a.batch} views; seconds per part")
    print(f"{'arch':9s} {'patch':>5s} {'rung':14s} " + " ".join(f"{c:>13s}" for c in cols) + "   term values")
    for arch, patch, name, flags, cfg in runs:
        args = cva.parse_args(["--store", "none", "--out", "/tmp/rungs-bench", *cfg, "--arch", arch,
                               "--patch-size", str(patch), "--device", a.device, *flags])
        r = one_step(args, device, a.batch)
        vals = ", ".join(f"{k[6:]} {v:.4g}" for k, v in r.items() if k.startswith("value_"))
        print(f"{arch:9s} {patch:5d} {name:14s} " + " ".join(f"{r.get(c, 0.0):13.3f}" for c in cols) + f"   {vals}",
              flush=True)


if __name__ == "__main__":
    main()
