"""Our export through the reference fork's nnU-Net adaptation (``nnunetv2/run/verify_checkpoint.py``,
``load_pretrained_weights``), re-typed here: 1 and 4 input channels, and Primus at the trained patch.

The fork reads ``recommended_downstream_patchsize`` as the pretraining patch: when the fine-tuning patch
differs, the learned positional embedding is replaced by a random one. Our plan names the trained patch.
"""

from __future__ import annotations

import json
import pydoc

import pytest
import torch
from torch import nn

from trainers import export, networks


def _fork_load_pretrained_weights(network: nn.Module, path, downstream_channels: int, downstream_patch) -> bool:
    """The fork's loading, step by step; returns whether the LPE was kept."""
    ckpt = torch.load(path, weights_only=True)
    weights, plan = ckpt["network_weights"], ckpt["nnssl_adaptation_plan"]
    random_init = network.state_dict()
    pt_channels, pt_patch = plan["pretrain_num_input_channels"], plan["recommended_downstream_patchsize"]
    pt_enc, pt_stem, pt_in_proj = plan["key_to_encoder"], plan["key_to_stem"], tuple(plan["keys_to_in_proj"])
    key_to_lpe = getattr(network, "key_to_lpe", None)
    ignore_lpe = key_to_lpe is not None and list(pt_patch) != list(downstream_patch)
    strip = lambda s: s[1:] if s.startswith(".") else s  # noqa: E731
    assert pt_stem not in weights  # the stem is its own module (not inside the encoder) in both architectures
    enc = {k: v for k, v in weights.items() if k.startswith(pt_enc)}
    stem = {k: v for k, v in weights.items() if k.startswith(pt_stem)}
    if downstream_channels > pt_channels:
        vals = stem[pt_in_proj[0] + ".weight"].repeat(1, downstream_channels, 1, 1, 1) / downstream_channels
        for k in pt_in_proj:
            stem[k + ".weight"] = vals
    new_enc = {strip(k.replace(pt_enc, "")): v for k, v in enc.items()}
    new_stem = {strip(k.replace(pt_stem, "")): v for k, v in stem.items()}
    if ignore_lpe and key_to_lpe.startswith(network.key_to_encoder):
        new_enc[strip(key_to_lpe.replace(network.key_to_encoder, ""))] = random_init[key_to_lpe]
    network.get_submodule(network.key_to_encoder).load_state_dict(new_enc)
    network.get_submodule(network.key_to_stem).load_state_dict(new_stem)
    if not ignore_lpe and key_to_lpe is not None:
        lpe = [v for k, v in weights.items() if k.startswith(plan["key_to_lpe"])]
        assert len(lpe) == 1
        network.get_parameter(key_to_lpe).data = lpe[0]
    return key_to_lpe is not None and not ignore_lpe


def _from_plan(plan: dict, channels: int) -> nn.Module:
    """nnU-Net's get_network_from_plans for a ResidualEncoderUNet plan with arch_kwargs."""
    arch = plan["architecture_plans"]
    kwargs = dict(arch["arch_kwargs"])
    for k in arch["arch_kwargs_requiring_import"]:
        kwargs[k] = pydoc.locate(kwargs[k])
    cls = pydoc.locate("dynamic_network_architectures.architectures.unet." + arch["arch_class_name"])
    return cls(input_channels=channels, num_classes=3, deep_supervision=False, **kwargs)


@pytest.mark.parametrize("channels", [1, 4])
def test_residual_export_adapts_to_1_and_4_input_channels(tmp_path, channels):
    torch.manual_seed(0)
    ours = networks.tiny()
    path = export.save_nnssl_checkpoint(tmp_path / "export.pth", ours, "tiny", (32, 32, 32), {"arch": "tiny"})
    plan = json.loads((tmp_path / "adaptation_plan.json").read_text())
    assert plan == torch.load(path, weights_only=True)["nnssl_adaptation_plan"]
    assert plan["recommended_downstream_patchsize"] == [32, 32, 32]
    downstream = _from_plan(plan, channels)
    downstream.key_to_encoder, downstream.key_to_stem = "encoder.stages", "encoder.stem"  # as nnU-Net's ResEnc classes
    _fork_load_pretrained_weights(downstream, path, channels, [32, 32, 32])
    w = ours.encoder.stem.convs[0].conv.weight
    torch.testing.assert_close(downstream.encoder.stem.convs[0].conv.weight, w.repeat(1, channels, 1, 1, 1) / channels)
    for k, v in ours.encoder.stages.state_dict().items():
        assert torch.equal(downstream.encoder.stages.state_dict()[k], v), k


def test_primus_export_keeps_its_positional_embedding_at_the_trained_patch(tmp_path):
    patch = (32, 32, 32)
    torch.manual_seed(0)
    ours = networks.primus_m(1, 1, patch)
    path = export.save_nnssl_checkpoint(tmp_path / "export.pth", ours, "primus-m", patch)
    PrimusM = networks._import_primus_m()
    downstream = PrimusM(input_channels=4, output_channels=3, input_shape=patch, patch_embed_size=(8, 8, 8))
    assert _fork_load_pretrained_weights(downstream, path, 4, list(patch))  # LPE kept
    assert torch.equal(downstream.eva.pos_embed, ours.eva.pos_embed)
    torch.testing.assert_close(downstream.down_projection.proj.weight,
                               ours.down_projection.proj.weight.repeat(1, 4, 1, 1, 1) / 4)
    # the old fixed 160³ recommendation made the fork drop the learned positional embedding of a 32³ run
    old = export.nnssl_checkpoint(ours, "primus-m", patch, downstream_patch_size=(160, 160, 160))
    torch.save(old, tmp_path / "old.pth")
    fresh = PrimusM(input_channels=1, output_channels=3, input_shape=patch, patch_embed_size=(8, 8, 8))
    assert not _fork_load_pretrained_weights(fresh, tmp_path / "old.pth", 1, list(patch))
    assert not torch.equal(fresh.eva.pos_embed, ours.eva.pos_embed)
