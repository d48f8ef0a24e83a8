"""Primus-M MAE as nnssl's EvaMAE: the same parameters (176,656,193 at 160³), token dropping, the fork's CVA features."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from trainers import architectures, method, networks
from trainers.networks import primus_m_mae
from trainers.primus_mae import PrimusMAE, keep_indices


def _nnssl_eva_mae(patch) -> nn.Module:
    """nnssl's EvaMAE as BaseEvaMAETrainer builds it, its literal arguments transcribed (embed 864, encoder
    16 layers × 12 heads, decoder 2 × 12, init_values 0.1, scale_attn_inner, LayerNormNd/GELU patch decoder)."""
    networks._import_primus_m()  # the timm/torchvision import work-around only
    from dynamic_network_architectures.building_blocks.eva import Eva
    from dynamic_network_architectures.building_blocks.patch_encode_decode import LayerNormNd, PatchDecode, PatchEmbed

    grid = tuple(p // 8 for p in patch)
    net = nn.Module()
    net.down_projection = PatchEmbed((8, 8, 8), 1, 864)
    net.eva = Eva(embed_dim=864, depth=16, num_heads=12, ref_feat_shape=grid, init_values=0.1, scale_attn_inner=True)
    net.up_projection = PatchDecode((8, 8, 8), 864, 1, norm=LayerNormNd, activation=nn.GELU)
    net.decoder = Eva(embed_dim=864, depth=2, num_heads=12, ref_feat_shape=grid, init_values=0.1, scale_attn_inner=True)
    net.mask_token = nn.Parameter(torch.zeros(1, 1, 864))
    return net


def test_parameters_and_keys_equal_nnssl_eva_mae_at_160():
    with torch.device("meta"):
        ours, ref = architectures.build_backbone("primus-m", (160, 160, 160)), _nnssl_eva_mae((160, 160, 160))
    assert isinstance(ours, PrimusMAE)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 176_656_193
    so, sr = ours.state_dict(), ref.state_dict()
    assert sorted(so) == sorted(sr) and all(so[k].shape == sr[k].shape for k in so)
    # the encoder is Primus-M's (what nnU-Net fine-tunes): 151,786,529 parameters with its patch decoder
    primus = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith(("decoder.", "mask_token")))
    assert primus == 151_786_529


def test_dropped_tokens_never_reach_the_encoder():
    torch.manual_seed(0)
    net = primus_m_mae(patch_size=(16, 16, 32)).eval()
    x = torch.randn(2, 1, 16, 16, 32)
    keep = torch.tensor([[0, 3, 6], [1, 2, 7]])
    grid, recon = net(x, keep)
    assert recon.shape == x.shape and grid.shape == (2, 864, 2, 2, 4)
    y = x.clone()
    y[:, :, 8:, 8:, 8:16] += 100.0  # token (1, 1, 1) of the 2×2×4 token grid
    idx = 1 * (2 * 4) + 1 * 4 + 1  # token (1, 1, 1) in (x y z) order of a 2×2×4 grid
    assert idx not in keep.flatten().tolist()
    grid2, recon2 = net(y, keep)
    torch.testing.assert_close(grid2, grid)  # a hidden token changes nothing the student sees
    seq = grid.flatten(2).transpose(1, 2)
    mask_rows = [i for i in range(16) if i not in keep[0].tolist()]
    assert torch.equal(seq[0, mask_rows], net.mask_token.expand(len(mask_rows), -1, -1)[:, 0])
    full, _ = net(y)  # without keep every token is encoded: the change shows
    assert not torch.allclose(full, net(x)[0])


def test_keep_indices_from_the_samplers_block_masks():
    from loaders.masking import block_mask

    masks = block_mask(3, (32, 32, 32), 0.75, 8, generator=torch.Generator().manual_seed(0))
    keep = keep_indices(masks)
    assert keep.shape == (3, 16)  # 64 tokens, 48 hidden
    grid = masks[:, 0, ::8, ::8, ::8].reshape(3, -1)
    for r in range(3):
        assert keep[r].tolist() == grid[r].nonzero().flatten().tolist()
    with pytest.raises(ValueError, match="whole 8"):
        keep_indices(block_mask(1, (32, 32, 32), 0.75, 4, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("consistency, contrastive", [("cva", True), ("none", False)])
def test_primus_rungs_use_the_forks_features_and_give_gradients(consistency, contrastive):
    torch.manual_seed(0)
    args = argparse.Namespace(consistency=consistency, contrastive=contrastive, voxel_head=True, recon_weight=5.0,
                              recon_loss="huber",
                              consistency_weight=1.0, contrastive_weight=0.1, temperature=0.5, align_size=2)
    heads = method.uses_heads(args)
    student = networks.CVANet(primus_m_mae(patch_size=(16, 16, 16)), pool_size=2, proj_dim=32, heads=heads)
    teacher = networks.CVANet(primus_m_mae(patch_size=(16, 16, 16)), pool_size=2, proj_dim=32, heads=heads).eval()
    assert (student.feature_decoder is not None) == heads
    views = torch.randn(4, 1, 16, 16, 16)
    from loaders.masking import block_mask

    masks = block_mask(4, (16, 16, 16), 0.75, 8, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.25, 0.0, 0.5, 1.0, 0.75, 1.0]] * 2 + [[0.0, 0.25, 0.0, 0.75, 1.0, 0.5]] * 2)
    out_s, out_t = method.forward_pair(student, teacher, views, masks, args)
    terms = method.cva_losses(out_s, out_t, views, boxes, masks, args)
    terms["loss"].backward()
    grads = [p.grad for n, p in student.backbone.eva.named_parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    if heads:
        assert student.feature_decoder.blocks[0].norm1.weight.grad is not None  # the student's features are decoded
        assert teacher.feature_decoder.blocks[0].norm1.weight.grad is None


def test_feature_decoder_equals_the_forks_consis_eva_mae_decoder():
    """The fork's ``ConsisEvaMAE.feature_decoder`` re-typed (consis_arch.py at 267c976, with BaseEvaMAETrainer's
    ``scale_attn_inner=True`` and ``drop_path_rate=0.2``): same parameter count, the same features on the
    same weights and input, drop path rising 0 → 0.2 over its two blocks."""
    from dynamic_network_architectures.building_blocks.eva import Eva

    torch.manual_seed(0)
    patch = (32, 32, 32)
    ours = networks.CVANet(primus_m_mae(patch_size=patch, drop_path_rate=0.2), pool_size=2, proj_dim=32).feature_decoder
    fork = Eva(embed_dim=864, depth=2, num_heads=16, ref_feat_shape=tuple(i // ds for i, ds in zip(patch, (8, 8, 8))),
               num_reg_tokens=0, use_rot_pos_emb=True, use_abs_pos_emb=True, mlp_ratio=4 * 2 / 3, drop_path_rate=0.2,
               patch_drop_rate=0, proj_drop_rate=0.0, attn_drop_rate=0.0, init_values=0.1, scale_attn_inner=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(fork)
    fork.load_state_dict(ours.state_dict())  # strict: every key and shape the same
    x = torch.randn(2, 64, 864)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x)[0], fork.eval()(x)[0])
    rates = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in ours.blocks]
    assert rates == pytest.approx([0.0, 0.2])
