"""What each rung of the ladder computes: which heads exist, which forwards run, which loss terms add up.

Kept apart from the loop (``trainers.cva``) so that a rung reads in one place: the student sees masked
(MAE) or plain (AE) views; the EMA teacher sees plain views and runs only when a term compares with it;
the consistency path aligns pooled features, or their voxel-head projections (``--voxel-head``, the
fork's ``use_projector=True``); NT-Xent uses the pooled vectors through the same heads.
"""

from __future__ import annotations

import argparse

__all__ = ["CONSISTENCY_WEIGHTS", "resolve_rung_defaults", "rung_problem", "uses_heads", "forward_pair", "consistency_term",
           "cva_losses", "init_stage2"]

# The reference fork's weight of each consistency term (AlignedMAELoss' fg_cos_weight in its ladder's trainers).
CONSISTENCY_WEIGHTS = {"none": 0.0, "cva": 1.0, "c-cva": 0.5, "gram": 2.0}


def resolve_rung_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the settings left out with the fork's value for the rung: the consistency term's weight, and the
    teacher momentum (its ``AlignedAETrainer`` copies the student every step; the MAE trainers use 0.995).

    >>> a = resolve_rung_defaults(argparse.Namespace(consistency="gram", consistency_weight=None, recon="ae",
    ...                                              ema_momentum=None))
    >>> a.consistency_weight, a.ema_momentum
    (2.0, 0.0)
    """
    if args.consistency_weight is None:
        args.consistency_weight = CONSISTENCY_WEIGHTS[args.consistency]
    if args.ema_momentum is None:
        args.ema_momentum = 0.0 if args.recon == "ae" else 0.995
    return args


def rung_problem(args: argparse.Namespace) -> str | None:
    """A setting the rung cannot run with (as a usage message), else None.

    >>> rung_problem(argparse.Namespace(arch="primus-m", recon="mae", mask_block=16))
    >>> rung_problem(argparse.Namespace(arch="primus-m", recon="mae", mask_block=12))
    '--mask-block 12: a Primus MAE hides whole 8³ tokens, use a multiple of 8'
    """
    if args.arch == "primus-m" and args.recon == "mae" and args.mask_block % 8:
        return f"--mask-block {args.mask_block}: a Primus MAE hides whole 8³ tokens, use a multiple of 8"
    return None


def uses_heads(args: argparse.Namespace) -> bool:
    """Whether the run needs the projector/predictor: NT-Xent on vectors, or voxel heads on a consistency term.

    >>> uses_heads(argparse.Namespace(contrastive=False, voxel_head=True, consistency="none"))
    False
    >>> uses_heads(argparse.Namespace(contrastive=False, voxel_head=True, consistency="gram"))
    True
    """
    return bool(args.contrastive or (args.voxel_head and args.consistency != "none"))


def forward_pair(student, teacher, views, masks, args: argparse.Namespace) -> tuple[dict, dict | None]:
    """Student on masked (MAE) or plain (AE) views; the teacher on plain views, only when a term uses it."""
    import torch

    voxel_head = args.voxel_head and args.consistency != "none"
    from trainers.primus_mae import PrimusMAE, keep_indices

    net = getattr(student, "module", student)  # the network inside DDP
    if masks is not None and isinstance(net.backbone, PrimusMAE):  # nnssl's Primus MAE: drop the hidden tokens
        out_s = student(views, predict=True, voxel_head=voxel_head, vector=args.contrastive, keep=keep_indices(masks))
    else:
        out_s = student(views if masks is None else views * masks, predict=True, voxel_head=voxel_head,
                        vector=args.contrastive)
    out_t = None
    if args.consistency != "none" or args.contrastive:
        with torch.no_grad():
            out_t = teacher(views, predict=False, voxel_head=voxel_head, vector=args.contrastive)
    return out_s, out_t


def consistency_term(a_s, a_t, args: argparse.Namespace):
    """The rung's consistency term between the RoI-aligned student and teacher feature volumes."""
    from trainers import losses

    if args.consistency == "cva":
        return losses.aligned_cosine(a_s, a_t)
    if args.consistency == "gram":
        return losses.gram_consistency(a_s, a_t, args.gram_norm)
    return losses.contrastive_voxels(a_s, a_t, args.temperature)


def cva_losses(out_s: dict, out_t: dict | None, views, boxes, masks, args: argparse.Namespace) -> dict:
    """The loss terms of the selected rung and their weighted sum ``loss``."""
    from trainers import losses

    terms = {"recon": losses.masked_huber(out_s["recon"], views, None if masks is None else ~masks)}
    total = args.recon_weight * terms["recon"]
    if args.consistency != "none":
        a_s = losses.align_views(out_s["volume"].float(), boxes, args.align_size)
        a_t = losses.align_views(out_t["volume"].float(), boxes, args.align_size)
        terms["consistency"] = consistency_term(a_s, a_t, args)
        total = total + args.consistency_weight * terms["consistency"]
    if args.contrastive:
        terms["ntxent"] = losses.contrastive_vectors(out_s["vector"], out_t["vector"], args.temperature)
        total = total + args.contrastive_weight * terms["ntxent"]
    return {"loss": total, **terms}


def init_stage2(student, teacher, args: argparse.Namespace, out, rank: int, world: int) -> int:
    """``--init-from``: load the backbone into the student (rank 0 fetches ``hf://`` first), copy it to the
    teacher; returns the number of tensors loaded. Raises ``ValueError`` (one line) for a source that does not fit."""
    import torch.distributed as dist

    from trainers.init_from import init_backbone

    keys: list[str] = []
    for first in (True, False):  # the other ranks then find the download verified
        if (rank == 0) == first:
            keys = init_backbone(student.backbone, args.init_from, cache=out / "init", endpoint=args.hub_endpoint,
                                 deadline_s=getattr(args, "hub_deadline", None))
        if world > 1:
            dist.barrier()
    teacher.load_state_dict(student.state_dict())
    return len(keys)
