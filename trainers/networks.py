"""Backbones (ResEnc-L, Primus-M, a tiny CPU net) from dynamic-network-architectures, and the CVA heads.

The ResEnc-L and Primus-M constructors use nnssl's literal arguments (``nnssl.architectures``:
``get_res_enc_l`` and ``get_network_by_name``), so state-dict keys and shapes are those of nnssl's
checkpoints and of the networks nnU-Net's fine-tuning builds. :class:`CVANet` wraps a backbone and
adds what CVA needs on top: per-stage features pooled to a volume and to a vector, and the
projector / predictor for the vector. Only ``CVANet.backbone`` is exported (see ``trainers.export``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from trainers.primus_mae import PrimusMAE

__all__ = ["resenc_l", "primus_m", "primus_m_mae", "tiny", "TINY_KWARGS", "RESENC_L_KWARGS", "stage_features",
           "CVANet"]


def resenc_l(in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """ResEnc-L exactly as nnssl's ``get_res_enc_l`` (6 stages, 32..320 features, 1-3-4-6-6-6 blocks).

    >>> sum(p.numel() for p in resenc_l().parameters()) > 90_000_000
    True
    """
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(input_channels=in_channels, num_classes=out_channels, deep_supervision=False,
                               **RESENC_L_KWARGS)


#: nnssl's ResEnc-L arguments (its ``get_res_enc_l``; the fork's ``get_network_from_name("ResEncL")``), as
#: nnU-Net's plans spell a ``ResidualEncoderUNet`` (``trainers.to_nnunet`` writes them into a plans file)
RESENC_L_KWARGS = dict(
    n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6,
    strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, n_blocks_per_stage=[1, 3, 4, 6, 6, 6], n_conv_per_stage_decoder=[1] * 5,
    conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
    dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
)


def primus_m(in_channels: int = 1, out_channels: int = 1, patch_size: Sequence[int] = (160, 160, 160), drop_path_rate: float = 0.0) -> nn.Module:
    """Primus-M as nnssl builds it: ``PrimusM(input_shape=patch_size, patch_embed_size=(8, 8, 8))``.

    ``drop_path_rate`` changes no parameter (nnssl's Primus MAE pretraining used 0.2).

    >>> primus_m(patch_size=(32, 32, 32)).eva.pos_embed.shape
    torch.Size([1, 64, 864])
    """
    PrimusM = _import_primus_m()
    return PrimusM(input_channels=in_channels, output_channels=out_channels, input_shape=tuple(patch_size),
                   patch_embed_size=(8, 8, 8), drop_path_rate=drop_path_rate)


def primus_m_mae(in_channels: int = 1, out_channels: int = 1, patch_size: Sequence[int] = (160, 160, 160),
                 drop_path_rate: float = 0.0) -> PrimusMAE:
    """nnssl's Primus-M MAE (``BaseEvaMAETrainer``: 16 encoder and 2 decoder layers, 12 heads, 864 wide).

    >>> net = primus_m_mae(patch_size=(16, 16, 16))
    >>> grid, recon = net(torch.zeros(2, 1, 16, 16, 16), keep=torch.tensor([[0, 5], [3, 7]]))
    >>> tuple(grid.shape), tuple(recon.shape)
    ((2, 864, 2, 2, 2), (2, 1, 16, 16, 16))
    """
    return PrimusMAE(primus_m(in_channels, out_channels, patch_size, drop_path_rate), patch_size,
                     drop_path_rate=drop_path_rate)


_TORCHVISION_SHIM = []  # keeps the placeholder op library alive


def _import_primus_m() -> type:
    """Import ``PrimusM`` (dynamic-network-architectures → timm → torchvision).

    A torchvision wheel built for CUDA next to a CPU-only torch cannot load its C++ ops, and its
    ``_meta_registrations`` then raises for the missing ``nms`` / ``qnms`` schemas, which breaks
    ``import timm``. Primus uses none of those ops, so in that case declare the two schemas (no
    kernels) and import again.
    """
    import sys

    try:
        from dynamic_network_architectures.architectures.primus import PrimusM
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [k for k in sys.modules if k.split(".")[0] in ("torchvision", "timm")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SHIM.append(lib)
        from dynamic_network_architectures.architectures.primus import PrimusM
    return PrimusM


# A small residual-encoder U-Net for CPU runs and tests; exported as nnssl's "ResidualEncoderUNet" with these kwargs.
TINY_KWARGS = dict(
    n_stages=4, features_per_stage=[8, 16, 32, 64], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 4,
    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1, 1],
    n_conv_per_stage_decoder=[1, 1, 1], conv_bias=True, norm_op=nn.InstanceNorm3d,
    norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
    nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
)


def tiny(in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """The tiny residual-encoder U-Net (4 stages, 8..64 features) for CPU runs.

    >>> tiny()(torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 1, 16, 16, 16])
    """
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **TINY_KWARGS)


def stage_features(backbone: nn.Module, x: torch.Tensor, decode: bool = True,
                   keep: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Run ``backbone`` once; return its per-stage feature maps and its output (the reconstruction).

    Residual U-Nets give every encoder stage's output; Primus gives its token grid ``[N, D, Z/8, Y/8, X/8]``.
    ``decode=False`` skips the decoder (frozen-feature probes) and returns ``None`` as the output.
    A Primus MAE (``trainers.primus_mae``) encodes only the tokens ``keep`` names (all when None).

    >>> feats, recon = stage_features(tiny(), torch.zeros(1, 1, 16, 16, 16))
    >>> [f.shape[1] for f in feats], recon.shape[2:]
    ([8, 16, 32, 64], torch.Size([16, 16, 16]))
    """
    if isinstance(backbone, PrimusMAE):  # nnssl's EvaMAE
        seq = backbone.encode(x, keep)
        if not decode:
            return [backbone.to_grid(seq)], None
        grid, recon = backbone(x, keep)
        return [grid], recon
    if hasattr(backbone, "eva"):  # Primus: the pieces of Primus.forward, keeping the token grid
        tokens = backbone.down_projection(x)
        n, d, *grid = tokens.shape
        seq, _ = backbone.eva(tokens.flatten(2).transpose(1, 2))
        tokens = seq.transpose(1, 2).reshape(n, d, *grid)
        return [tokens], backbone.up_projection(tokens) if decode else None
    skips = backbone.encoder(x)
    return list(skips), backbone.decoder(skips) if decode else None


def _mlp(dims: Sequence[int], last_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        last = i == len(dims) - 2
        if not last or last_norm:
            layers.append(nn.BatchNorm1d(b, affine=False, track_running_stats=False))
        if not last:
            layers.append(nn.SiLU())
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class CVANet(nn.Module):
    """Backbone + CVA heads. ``forward(x, predict, voxel_head, vector)`` returns ``recon``, ``volume``, ``vector``.

    ``volume``: every stage adaptively average-pooled to ``pool_size``³ and concatenated over channels
    (pooling covers the whole view, so overlap boxes still apply); with ``voxel_head`` every pooled
    voxel then goes through the projector (→ ``proj_dim``) and, when ``predict``, the predictor, as the
    reference fork's ``use_projector=True`` (one projector and predictor shared by voxels and vectors).
    ``vector``: every stage globally pooled, concatenated, projector, predictor when ``predict``.
    The heads exist only when ``heads`` is set (a run that uses them), so DDP sees no dead heads.
    On a Primus MAE, as the fork's ``ConsisEvaMAE``: a view encoded from kept tokens only (``keep``) gets
    its features from a 2-layer Eva over the restored sequence (``feature_decoder``, with the fork's
    ``scale_attn_inner=True`` and drop path rising to the backbone's rate), a fully encoded view
    from the encoder; the vector is an attention-weighted mean of the tokens (``attention_pooling``).

    >>> net = CVANet(tiny(), pool_size=4, proj_dim=32)
    >>> out = net(torch.zeros(2, 1, 16, 16, 16))
    >>> tuple(out["volume"].shape), tuple(out["vector"].shape)
    ((2, 120, 4, 4, 4), (2, 32))
    >>> tuple(net(torch.zeros(2, 1, 16, 16, 16), voxel_head=True)["volume"].shape)
    (2, 32, 4, 4, 4)
    """

    def __init__(self, backbone: nn.Module, pool_size: int = 16, proj_dim: int = 2048, heads: bool = True):
        super().__init__()
        self.backbone, self.pool_size = backbone, pool_size
        if hasattr(backbone, "eva"):
            channels = backbone.embed_dim
        else:
            channels = sum(backbone.encoder.output_channels)
        self.projector = _mlp([channels, proj_dim, proj_dim, proj_dim], last_norm=True) if heads else None
        self.predictor = _mlp([proj_dim, proj_dim // 4, proj_dim], last_norm=False) if heads else None
        self.feature_decoder = self.attention_pooling = None
        if heads and isinstance(backbone, PrimusMAE):
            from dynamic_network_architectures.building_blocks.eva import Eva

            self.feature_decoder = Eva(embed_dim=channels, depth=2, num_heads=16, ref_feat_shape=backbone.grid,
                                       patch_drop_rate=0, init_values=0.1, scale_attn_inner=True,
                                       drop_path_rate=backbone.drop_path_rate)
            self.attention_pooling = nn.Linear(channels, 1)

    def head(self, z: torch.Tensor, predict: bool) -> torch.Tensor:
        """Projector (then predictor when ``predict``) on rows ``[N, C]``."""
        if self.projector is None:
            raise ValueError("this CVANet was built without heads (heads=False)")
        z = self.projector(z.float())
        return self.predictor(z) if predict else z

    def forward(self, x: torch.Tensor, predict: bool = True, voxel_head: bool = False,
                vector: bool = True, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        feats, recon = stage_features(self.backbone, x, keep=keep)
        if keep is not None and self.feature_decoder is not None:  # Primus MAE student: decode the features
            n, d, *grid = feats[0].shape
            seq, _ = self.feature_decoder(feats[0].flatten(2).transpose(1, 2))
            feats = [seq.transpose(1, 2).reshape(n, d, *grid)]
        volume = torch.cat([F.adaptive_avg_pool3d(f, self.pool_size) for f in feats], dim=1)
        if voxel_head:  # every pooled voxel through the heads: [N, C, p, p, p] -> [N·p³, C] -> back
            n, c, *grid = volume.shape
            rows = self.head(volume.flatten(2).transpose(1, 2).reshape(-1, c), predict)
            volume = rows.reshape(n, -1, rows.shape[1]).transpose(1, 2).reshape(n, rows.shape[1], *grid)
        vec = None
        if vector and self.projector is not None:
            if self.attention_pooling is not None:  # softmax over tokens of a learned score, as the fork's Primus
                seq = feats[0].flatten(2).transpose(1, 2)
                pooled = (torch.softmax(self.attention_pooling(seq), dim=1) * seq).sum(dim=1)
            else:
                pooled = torch.cat([f.mean(dim=(2, 3, 4)) for f in feats], dim=1)
            vec = self.head(pooled, predict)
        return {"recon": recon, "volume": volume, "vector": vec}
