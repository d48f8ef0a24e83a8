"""Our export through the reference's fine-tuning, re-typed here and run on exports of every architecture:
the fork's ``nnUNetv2_preprocess_like_nnssl`` plan reading, ``PretrainedTrainer`` (network from the plans,
``load_pretrained_weights``, ``print_citations``) and nnssl's ``run/load_pretrained_weights.py``.

The fork builds the downstream network at the pretraining patch (``pretrain_plan``'s first configuration);
``recommended_downstream_patchsize`` names the same patch, so nothing of a Primus is dropped.
"""

from __future__ import annotations

import json
import pydoc

import pytest
import torch
from torch import nn

from trainers import architectures, export, networks


def _fork_load_pretrained_weights(network: nn.Module, path, downstream_channels: int, downstream_patch) -> None:
    """The fork's ``PretrainedTrainer.load_pretrained_weights``, step by step (stem outside the encoder).

    As in the fork, ``get_submodule(key_to_lpe)`` raises for a parameter (``eva.pos_embed`` is not a module), so
    its LPE branch never runs: a Primus' positional embedding loads with the encoder, and a patch other than the
    pretraining one would fail on its shape. The fork builds the network at the pretraining patch.
    """
    ckpt = torch.load(path, weights_only=True, mmap=True)
    weights, plan = ckpt["network_weights"], ckpt["nnssl_adaptation_plan"]
    random_init = network.state_dict()
    pt_channels = plan["pretrain_num_input_channels"]
    pt_patch = list(next(iter(plan["pretrain_plan"]["configurations"].values()))["patch_size"])
    pt_enc, pt_stem, pt_in_proj = plan["key_to_encoder"], plan["key_to_stem"], tuple(plan["keys_to_in_proj"])
    key_to_lpe = getattr(network, "key_to_lpe", None)
    try:
        network.get_submodule(key_to_lpe)
    except AttributeError:
        key_to_lpe = None
    ignore_lpe = key_to_lpe is not None and pt_patch != list(downstream_patch)
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


def _from_plan(plan: dict, channels: int, classes: int = 3) -> nn.Module:
    """nnU-Net's get_network_from_plans for a ResidualEncoderUNet plan with arch_kwargs."""
    arch = plan["architecture_plans"]
    kwargs = dict(arch["arch_kwargs"])
    for k in arch["arch_kwargs_requiring_import"]:
        kwargs[k] = pydoc.locate(kwargs[k])
    cls = pydoc.locate("dynamic_network_architectures.architectures.unet." + arch["arch_class_name"])
    return cls(input_channels=channels, num_classes=classes, deep_supervision=False, **kwargs)


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


# --- every architecture through the fork's like_nnssl + PretrainedTrainer and nnssl's loader (issue 21.1) ---

PATCH = {"tiny": (32, 32, 32), "resenc-l": (128, 128, 128), "primus-m": (32, 32, 32)}


def _fork_print_citations(cits: list) -> str:
    """PretrainedTrainer.print_citations, re-typed: sort by type, index type / name / apa_citations."""
    lines = ["Please cite the associated papers when using pre-trained weights:"]
    for cit in sorted(cits, key=lambda x: x["type"]):
        lines.append(f"{cit['type']} used '{cit['name']}'. Associated paper(s):")
        for c in cit["apa_citations"]:
            lines.append(c)
        lines[-1] += "\n"
    return "\n".join(lines)


def _fork_like_nnssl(ckpt_path, downstream_plans: dict, name: str = "ours") -> dict:
    """nnUNetv2_preprocess_like_nnssl's plan reading (-am like_pretrained), re-typed; the plans go through JSON."""
    import copy

    ck = torch.load(ckpt_path, weights_only=True, mmap=True)
    plan = ck["nnssl_adaptation_plan"]
    cits = ck["citations"] if "citations" in ck else []
    pt_config = list(plan["pretrain_plan"]["configurations"].values())[0]
    arch = plan["architecture_plans"]
    arch["network_class_name"] = arch.pop("arch_class_name")
    arch["_kw_requires_import"] = arch.pop("arch_kwargs_requiring_import")
    plans = copy.deepcopy(downstream_plans)
    plans["pretrain_info"] = {
        "checkpoint_path": str(ckpt_path), "checkpoint_name": name, "key_to_encoder": plan["key_to_encoder"],
        "key_to_stem": plan["key_to_stem"], "keys_to_in_proj": plan["keys_to_in_proj"], "key_to_lpe": plan["key_to_lpe"],
        "pt_num_in_channels": plan["pretrain_num_input_channels"], "pt_used_patchsize": pt_config["patch_size"],
        "pt_recommended_downstream_patchsize": plan["recommended_downstream_patchsize"], "citations": cits}
    config = plans["configurations"]["3d_fullres"]
    spacing = pt_config["spacing"]
    config["spacing"] = spacing
    config["normalization_schemes"] = ["ZScoreNormalization" for _ in config["normalization_schemes"]]
    ident = "Spacing__{}_{}_{}".format(*[f"{x:.2f}" for x in spacing]) + "___Norm__" + "_".join(
        "Z" for _ in config["normalization_schemes"])
    config.update(data_identifier=ident, preprocessor_name="DefaultPreprocessor", architecture=arch,
                  patch_size=pt_config["patch_size"])
    plans["configurations"] = {"3d_fullres": config}
    plans["plans_name"] = f"ptPlans__{name}____{ident}"
    return json.loads(json.dumps(plans))  # save_json / load_json


def _fork_res_enc_l(channels: int, classes: int) -> nn.Module:
    """The fork's get_network_from_name('ResEncL'), re-typed (on the meta device: shapes, not values)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(
        input_channels=channels, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, n_blocks_per_stage=[1, 3, 4, 6, 6, 6],
        num_classes=classes, n_conv_per_stage_decoder=[1] * 5, conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False)


def _fork_build_network(config: dict, channels: int, classes: int) -> nn.Module:
    """PretrainedTrainer.build_network_architecture, re-typed: plans' kwargs for U-Nets, the name registry else."""
    arch = config["architecture"]
    name = arch["network_class_name"]
    with torch.device("meta"):
        if name.endswith(("PlainConvUNet", "ResidualEncoderUNet")):
            net = _from_plan({"architecture_plans": {"arch_class_name": name, "arch_kwargs": arch["arch_kwargs"],
                                                     "arch_kwargs_requiring_import": arch["_kw_requires_import"]}},
                             channels, classes)
        elif name == "ResEncL":
            net = _fork_res_enc_l(channels, classes)
        elif name == "PrimusM":
            net = networks._import_primus_m()(input_channels=channels, output_channels=classes,
                                              patch_embed_size=(8, 8, 8), input_shape=tuple(config["patch_size"]))
        else:
            raise NotImplementedError(name)
    net = net.to_empty(device="cpu")
    if name == "PrimusM":
        net.key_to_encoder, net.key_to_stem, net.key_to_lpe = "eva", "down_projection", "eva.pos_embed"
    else:
        net.key_to_encoder, net.key_to_stem = "encoder.stages", "encoder.stem"
    return net


def _nnssl_load_pretrained_weights(network: nn.Module, path) -> None:
    """nnssl's run/load_pretrained_weights.py, re-typed: every key but .seg_layers. present with its shape."""
    pretrained = torch.load(path, weights_only=True, mmap=True)["network_weights"]
    model = network.state_dict()
    for key in model:
        if ".seg_layers." not in key:
            assert key in pretrained, key
            assert model[key].shape == pretrained[key].shape, key
    model.update({k: v for k, v in pretrained.items() if k in model and ".seg_layers." not in k})
    network.load_state_dict(model)


@pytest.fixture(scope="module", params=["tiny", "resenc-l", "primus-m"])
def exported(request, tmp_path_factory):
    """``(arch, backbone, export path)``: what ``trainers.cva --export`` writes for ``arch``, each tensor filled
    with its own index (built on the meta device: ResEnc-L and Primus-M initialise in a fraction of a second)."""
    arch = request.param
    with torch.device("meta"):
        ours = architectures.build_backbone(arch, PATCH[arch])
    ours = ours.to_empty(device="cpu")
    with torch.no_grad():
        for i, t in enumerate(ours.state_dict().values()):
            t.fill_(i + 1)
    path = export.save_nnssl_checkpoint(tmp_path_factory.mktemp(arch) / "export.pth", ours, arch, PATCH[arch],
                                        {"arch": arch})
    return arch, ours, path


def test_citations_are_nnssl_records_the_fork_prints(exported):
    arch, _, path = exported
    cits = torch.load(path, weights_only=True, mmap=True)["citations"]
    text = _fork_print_citations(cits)  # plain strings: TypeError: string indices must be integers
    assert {"type", "name", "apa_citations"} == set().union(*cits) and all(isinstance(c["apa_citations"], list) for c in cits)
    assert "Pre-training Method used 'Consistent View Alignment (CVA)'" in text and "arXiv:2509.13846" in text
    assert {"tiny": "Architecture used 'ResidualEncoderUNet", "resenc-l": "Architecture used 'ResEnc-L'",
            "primus-m": "Architecture used 'Primus-M'"}[arch] in text


def test_fork_like_nnssl_and_pretrained_trainer_load_every_architecture(exported):
    """The fork's downstream path end to end on our export: plan reading, network from the plans, weight
    loading (4 input channels, 3 classes), citations from the plans' JSON."""
    arch, ours, path = exported
    downstream = {"dataset_name": "Dataset001_Test", "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
        "spacing": [1.5, 0.8, 0.8], "patch_size": [64, 96, 96], "normalization_schemes": ["CTNormalization"] * 4,
        "data_identifier": "nnUNetPlans_3d_fullres"}}}
    plans = _fork_like_nnssl(path, downstream)
    info, config = plans["pretrain_info"], plans["configurations"]["3d_fullres"]
    assert config["patch_size"] == list(PATCH[arch]) and config["spacing"] == [1.0, 1.0, 1.0]
    assert config["architecture"]["network_class_name"] == architectures.get(arch).export_class
    assert "Architecture used" in _fork_print_citations(info["citations"])
    net = _fork_build_network(config, 4, 3)
    downstream_patch = info["pt_recommended_downstream_patchsize"]
    assert info["pt_used_patchsize"] == downstream_patch  # the fork keeps the LPE only then
    _fork_load_pretrained_weights(net, path, 4, downstream_patch)
    enc_key = "eva" if arch == "primus-m" else "encoder.stages"
    theirs = net.get_submodule(enc_key).state_dict()
    for k, v in ours.get_submodule(enc_key).state_dict().items():
        assert torch.equal(theirs[k], v), k  # a Primus' positional embedding included (eva.pos_embed)
    stem = "down_projection.proj.weight" if arch == "primus-m" else "encoder.stem.convs.0.conv.weight"
    torch.testing.assert_close(net.get_parameter(stem), ours.get_parameter(stem).repeat(1, 4, 1, 1, 1) / 4)


def test_nnssl_load_pretrained_weights_accepts_every_architecture(exported):
    """nnssl's loader needs every key but the head in the export with its shape: a network of the same
    architecture with another class count (U-Nets: only ``seg_layers`` differ) loads it."""
    arch, ours, path = exported
    classes = 1 if arch == "primus-m" else 3  # Primus has no seg_layers: its up_projection depends on the classes
    with torch.device("meta"):
        net = architectures.build_backbone(arch, PATCH[arch], 1, classes)
    net = net.to_empty(device="cpu")
    _nnssl_load_pretrained_weights(net, path)
    loaded = net.state_dict()
    for k, v in ours.state_dict().items():
        if ".seg_layers." not in k:
            assert torch.equal(loaded[k], v), k
