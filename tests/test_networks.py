"""Backbones equal nnssl's configuration; the nnssl export loads into dynamic-network-architectures networks."""

from __future__ import annotations

import io
import pydoc

import pytest
import torch
from torch import nn

from trainers import architectures, export, networks


def _nnssl_resenc_l() -> nn.Module:
    """nnssl.architectures.architecture_registry.get_res_enc_l(1, 1), its literal arguments transcribed."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    n_stages = 6
    return ResidualEncoderUNet(
        input_channels=1, n_stages=n_stages, features_per_stage=[32, 64, 128, 256, 320, 320], conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3] for _ in range(n_stages)],
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 3, 4, 6, 6, 6], num_classes=1, n_conv_per_stage_decoder=[1, 1, 1, 1, 1],
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )


def _nnssl_primus_m(patch=(160, 160, 160)) -> nn.Module:
    """nnssl.architectures.get_network_by_name(..., "PrimusM", 1, 1), literal arguments transcribed."""
    PrimusM = networks._import_primus_m()  # the dynamic-network-architectures class (import work-around only)
    return PrimusM(input_channels=1, output_channels=1, input_shape=patch, patch_embed_size=(8, 8, 8))


def _same_layout(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert [v.shape for v in sa.values()] == [v.shape for v in sb.values()]
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def _load_like_nnunet(ckpt: dict, network: nn.Module) -> None:
    """What nnssl's verify step and nnU-Net's PretrainedTrainer do: strict loads of encoder and stem
    (keys re-rooted at the network's own submodules), then the learnable positional embedding."""
    plan, weights = ckpt["nnssl_adaptation_plan"], ckpt["network_weights"]
    for pt_key, key in ((plan["key_to_encoder"], network.key_to_encoder), (plan["key_to_stem"], network.key_to_stem)):
        part = {k[len(pt_key):].lstrip("."): v for k, v in weights.items() if k.startswith(pt_key)}
        network.get_submodule(key).load_state_dict(part)
    if plan["key_to_lpe"] is not None:
        network.get_parameter(network.key_to_lpe).data = weights[plan["key_to_lpe"]]
    for key in plan["keys_to_in_proj"]:
        assert weights[key + ".weight"].shape[1] == plan["pretrain_num_input_channels"]


def _roundtrip(ckpt: dict) -> dict:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # nnU-Net loads pretrained checkpoints with weights_only=True


@pytest.mark.parametrize("arch", ["resenc-l", "primus-m"])
def test_layout_equals_nnssl(arch):
    """Keys, shapes and parameter counts at the reference's patch size (built on the meta device: no memory)."""
    with torch.device("meta"):
        ours = networks.resenc_l() if arch == "resenc-l" else networks.primus_m(patch_size=(160, 160, 160))
        ref = _nnssl_resenc_l() if arch == "resenc-l" else _nnssl_primus_m((160, 160, 160))
    _same_layout(ours, ref)
    count = sum(p.numel() for p in ours.parameters())
    assert count == {"resenc-l": 102_348_965, "primus-m": 151_786_529}[arch]  # recorded from the reference build


def test_resenc_l_export_loads_into_nnunets_network():
    ours = networks.resenc_l()
    with torch.device("meta"):
        ref = _nnssl_resenc_l()
    ref = ref.to_empty(device="cpu")  # uninitialised: everything the checkpoint covers must be loaded
    ckpt = export.nnssl_checkpoint(ours, "resenc-l", (128, 128, 128))
    assert ckpt["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"] == "ResEncL"
    _load_like_nnunet(ckpt, ref)
    for k, v in ours.encoder.state_dict().items():
        assert torch.equal(ref.encoder.state_dict()[k], v), k


def test_primus_m_export_loads_and_features_match_forward():
    patch = (16, 16, 24)
    torch.manual_seed(0)
    ours, ref = networks.primus_m(1, 1, patch).eval(), _nnssl_primus_m(patch).eval()  # ref: real (rope buffers)
    ckpt = _roundtrip(export.nnssl_checkpoint(ours, "primus-m", patch))
    plan = ckpt["nnssl_adaptation_plan"]
    assert plan["pretrain_plan"]["configurations"]["onemmiso"]["patch_size"] == list(patch)
    _load_like_nnunet(ckpt, ref)
    x = torch.randn(2, 1, *patch)
    feats, recon = networks.stage_features(ours, x)
    assert feats[0].shape == (2, 864, 2, 2, 3)
    torch.testing.assert_close(recon, ours(x))
    # the loaded encoder computes what ours does (the decoder is re-initialised downstream, as in nnU-Net)
    torch.testing.assert_close(networks.stage_features(ref, x)[0][0], feats[0])


def test_tiny_export_rebuilds_from_its_plan_and_loads(tmp_path):
    """The plan of a non-preset net carries arch_kwargs that nnU-Net's get_network_from_plans can import."""
    net = networks.tiny()
    path = export.save_nnssl_checkpoint(tmp_path / "tiny.pth", net, "tiny", (32, 32, 32), {"arch": "tiny"})
    ckpt = torch.load(path, weights_only=True)
    arch = ckpt["nnssl_adaptation_plan"]["architecture_plans"]
    kwargs = dict(arch["arch_kwargs"])
    for k in arch["arch_kwargs_requiring_import"]:
        kwargs[k] = pydoc.locate(kwargs[k])
    cls = pydoc.locate("dynamic_network_architectures.architectures.unet." + arch["arch_class_name"])
    rebuilt = cls(input_channels=1, num_classes=3, deep_supervision=False, **kwargs)  # a downstream head
    _load_like_nnunet(ckpt, rebuilt)
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval(), rebuilt.eval()
    for a, b in zip(net.encoder(x), rebuilt.encoder(x)):
        torch.testing.assert_close(a, b)


def test_stage_features_reproduce_the_backbone_forward():
    torch.manual_seed(0)
    net = networks.tiny().eval()
    x = torch.randn(2, 1, 16, 24, 16)
    feats, recon = networks.stage_features(net, x)
    torch.testing.assert_close(recon, net(x))
    assert all(f.shape[0] == 2 for f in feats)


def test_cva_net_heads_and_pooling():
    torch.manual_seed(0)
    net = networks.CVANet(networks.tiny(), pool_size=4, proj_dim=32)
    out = net(torch.randn(4, 1, 16, 16, 16), predict=True)
    assert out["volume"].shape == (4, 8 + 16 + 32 + 64, 4, 4, 4)
    assert out["vector"].shape == (4, 32)
    assert net(torch.randn(4, 1, 16, 16, 16), predict=False)["vector"].shape == (4, 32)
    plain = networks.CVANet(networks.tiny(), pool_size=4, heads=False)
    assert plain.projector is None and plain(torch.randn(2, 1, 16, 16, 16))["vector"] is None
    # 32³ input: the last stage is 4³ = the pool size, so its slice of the volume is that stage unchanged
    x = torch.randn(2, 1, 32, 32, 32)
    plain.eval()
    feats, _ = networks.stage_features(plain.backbone, x)
    assert feats[3].shape[2:] == (4, 4, 4)
    torch.testing.assert_close(plain(x)["volume"][:, 8 + 16 + 32:], feats[3])


def test_voxel_head_projects_every_pooled_voxel_like_the_forks_rearrange():
    """The fork: ``(b w h d) c`` rows through projector (+ predictor on the student), back to ``b c w h d``."""
    torch.manual_seed(1)
    net = networks.CVANet(networks.tiny(), pool_size=2, proj_dim=16).eval()  # BN uses batch stats either way
    x = torch.randn(3, 1, 16, 16, 16)
    raw = net(x, voxel_head=False)["volume"]
    for predict in (True, False):
        got = net(x, predict=predict, voxel_head=True)["volume"]
        rows = raw.permute(0, 2, 3, 4, 1).reshape(-1, raw.shape[1])  # "b c w h d -> (b w h d) c"
        z = net.projector(rows)
        z = net.predictor(z) if predict else z
        want = z.reshape(3, 2, 2, 2, 16).permute(0, 4, 1, 2, 3)  # "(b w h d) c -> b c w h d"
        torch.testing.assert_close(got, want)
    assert [m.out_features for m in net.projector if isinstance(m, nn.Linear)] == [16, 16, 16]
    assert [m.out_features for m in net.predictor if isinstance(m, nn.Linear)] == [4, 16]
    with pytest.raises(ValueError, match="without heads"):
        networks.CVANet(networks.tiny(), pool_size=2, heads=False)(x, voxel_head=True)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        architectures.build_backbone("resenc-xxl", (32, 32, 32))
