"""What each rung of the ladder computes: which heads exist, which forwards run, which loss terms add up.

Kept apart from the loop (``trainers.cva``) so that a rung reads in one place: the student sees masked
(MAE) or plain (AE) views; the EMA teacher sees plain views and runs only when a term compares with it;
the consistency path aligns pooled features, or their voxel-head projections (``--voxel-head``, the
fork's ``use_projector=True``); NT-Xent uses the pooled vectors through the same heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.settings import Settings

__all__ = ["uses_heads", "forward_pair", "consistency_term", "reconstruction_term", "cva_losses", "init_stage2"]


def uses_heads(args: Settings) -> bool:
    """Whether the run needs the projector/predictor: NT-Xent on vectors, or voxel heads on a consistency term.

    >>> from trainers.settings import resolve
    >>> uses_heads(resolve({"contrastive": False, "consistency": "none"}, world=1))
    False
    >>> uses_heads(resolve({"contrastive": False, "consistency": "gram"}, world=1))
    True
    """
    return bool(args.contrastive or (args.voxel_head and args.consistency != "none"))


def forward_pair(student, teacher, views, masks, args: Settings) -> tuple[dict, dict | None]:
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


def consistency_term(a_s, a_t, args: Settings):
    """The rung's consistency term between the RoI-aligned student and teacher feature volumes."""
    from trainers import losses

    if args.consistency == "cva":
        return losses.aligned_cosine(a_s, a_t)
    if args.consistency == "gram":
        return losses.gram_consistency(a_s, a_t, args.gram_norm)
    return losses.contrastive_voxels(a_s, a_t, args.temperature)


def reconstruction_term(pred, target, hidden, kind: str):
    """nnssl's MSE (``MAEMSELoss``) or the fork's Huber on the hidden voxels (all voxels when ``hidden`` is None)."""
    from trainers import losses

    if kind == "mse":
        return losses.masked_mse(pred, target, hidden)
    return losses.masked_huber(pred, target, hidden)


def cva_losses(out_s: dict, out_t: dict | None, views, boxes, masks, args: Settings) -> dict:
    """The loss terms of the selected rung and their weighted sum ``loss``."""
    from trainers import losses

    terms = {"recon": reconstruction_term(out_s["recon"], views, None if masks is None else ~masks, args.recon_loss)}
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


def init_stage2(student, teacher, args: Settings, out, rank: int, world: int) -> int:
    """``--init-from``: load the backbone into the student (rank 0 fetches ``hf://`` first), copy it to the
    teacher; returns the number of tensors loaded. The reconstruction head (``.seg_layers.``) stays fresh, as the
    fork's ``load_pretrained_weights``, unless ``--init-recon-head``. Raises ``ValueError`` (one line) for a source that does not fit."""
    import torch.distributed as dist

    from trainers.init_from import init_backbone

    keys: list[str] = []
    for first in (True, False):  # the other ranks then find the download verified
        if (rank == 0) == first:
            keys = init_backbone(student.backbone, args.init_from, cache=out / "init", endpoint=args.hub_endpoint,
                                 deadline_s=args.hub_deadline, recon_head=args.init_recon_head)
        if world > 1:
            dist.barrier()
    teacher.load_state_dict(student.state_dict())
    return len(keys)
