"""Primus-M masked autoencoder as nnssl pretrains it (``EvaMAE``): token dropping, mask token, Eva decoder.

nnssl's Primus MAE embeds the view in 8³ tokens, drops 75 % of them before the encoder (the kept
ones keep their absolute and rotary position embeddings), fills the dropped places with one learned
mask token, runs a 2-layer Eva decoder (its own positional embedding) over the full sequence and
projects back to voxels with the Primus patch decoder. Its state-dict keys are nnssl's
(``down_projection``, ``eva``, ``up_projection``, ``decoder``, ``mask_token``), so nnssl's Primus MAE
checkpoints load as they are, and the encoder keys are Primus-M's (what nnU-Net fine-tunes).

Differences from nnssl, on purpose: the dropped tokens come from the sampler's MAE mask (8³ blocks
drawn from our generator, exactly ``int(0.75 · n)`` per view, replayed on resume) instead of timm's
``PatchDropout`` on the global RNG; tokens are ordered as Primus orders them (``(x y z)``, where
nnssl's ``EvaMAE`` flattens ``(y x z)`` but builds its loss mask as ``(x y z)``, so its loss counts some
visible voxels as hidden and the other way round).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["PrimusMAE", "keep_indices"]

TOKEN = 8  # Primus-M's patch embedding, voxels per token and axis


def keep_indices(masks: torch.Tensor, token: int = TOKEN) -> torch.Tensor:
    """``[N, K]`` indices (Primus' token order) of the visible tokens of block masks ``[N, 1, X, Y, Z]``.

    The masks must be constant over ``token``³ blocks and show the same number of tokens per view.

    >>> m = torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool)
    >>> m[0, :, :8, :8, 8:] = True; m[1, :, 8:, 8:, 8:] = True
    >>> keep_indices(m).tolist()
    [[1], [7]]
    """
    grid = masks[:, 0, ::token, ::token, ::token]
    n = grid.shape[0]
    if not torch.equal(grid.repeat_interleave(token, 1).repeat_interleave(token, 2).repeat_interleave(token, 3),
                       masks[:, 0]):
        raise ValueError(f"Primus MAE masks must hide whole {token}³ tokens (use --mask-block {token})")
    flat = grid.reshape(n, -1)
    counts = flat.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("Primus MAE masks must keep the same number of tokens in every view")
    return flat.nonzero()[:, 1].reshape(n, int(counts[0]))


class PrimusMAE(nn.Module):
    """Primus-M encoder + nnssl's MAE decoder. ``forward(x, keep)`` → (token grid, reconstruction).

    Built by ``trainers.networks.primus_m_mae`` (``trainers.architectures.build_backbone("primus-m", ...)``).

    Without ``keep`` every token is encoded (the teacher, an AE, fine-tuning) and the grid is the
    encoder's output; with ``keep`` (``[N, K]``) only those tokens are encoded, and the grid is the
    encoder's output at the kept places and the mask token elsewhere (the input of both decoders).
    """

    def __init__(self, primus: nn.Module, patch_size: Sequence[int], decoder_depth: int = 2, decoder_heads: int = 12,
                 drop_path_rate: float = 0.0):
        super().__init__()
        from dynamic_network_architectures.building_blocks.eva import Eva

        self.down_projection, self.eva, self.up_projection = primus.down_projection, primus.eva, primus.up_projection
        self.embed_dim = primus.embed_dim
        self.key_to_encoder, self.key_to_stem, self.key_to_lpe = "eva", "down_projection", "eva.pos_embed"
        self.grid = tuple(p // TOKEN for p in patch_size)
        self.drop_path_rate = drop_path_rate  # the feature decoder of a CVA run uses it too (trainers.networks)
        self.decoder = Eva(embed_dim=self.embed_dim, depth=decoder_depth, num_heads=decoder_heads,
                           ref_feat_shape=self.grid, drop_path_rate=drop_path_rate, patch_drop_rate=0,
                           init_values=0.1, scale_attn_inner=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=1e-6)

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Token sequence ``[N, L, D]``: the encoder's output, mask tokens where ``keep`` left tokens out."""
        from timm.layers import apply_keep_indices_nlc

        tokens = self.down_projection(x)
        n, d = tokens.shape[:2]
        seq = tokens.flatten(2).transpose(1, 2)
        if self.eva.pos_embed is not None:
            seq = seq + self.eva.pos_embed
        rope = self.eva.rope.get_embed() if self.eva.rope is not None else None
        if keep is not None:
            seq = seq.gather(1, keep[..., None].expand(-1, -1, d))
            rope = apply_keep_indices_nlc(seq, rope, keep)[:, None] if rope is not None else None  # [N, 1, K, .]: per head
        for block in self.eva.blocks:
            seq = block(seq, rope=rope)
        seq = self.eva.norm(seq)
        if keep is None:
            return seq
        full = self.mask_token.to(seq.dtype).expand(n, tokens[0, 0].numel(), d).clone()
        return full.scatter(1, keep[..., None].expand(-1, -1, d), seq)

    def to_grid(self, seq: torch.Tensor) -> torch.Tensor:
        """``[N, L, D]`` → ``[N, D, gx, gy, gz]``."""
        return seq.transpose(1, 2).reshape(seq.shape[0], seq.shape[2], *self.grid)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        seq = self.encode(x, keep)
        decoded, _ = self.decoder(seq)
        return self.to_grid(seq), self.up_projection(self.to_grid(decoded))
