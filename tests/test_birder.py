"""zoo.birder: every zoo checkpoint as a birder network and detection backbone (needs the [birder] extra)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

birder = pytest.importorskip("birder")

from birder.common.fs_ops import ModelInfo as BirderModelInfo  # noqa: E402
from birder.model_registry import registry  # noqa: E402
from birder.net.base import DetectorBackbone  # noqa: E402
from PIL import Image  # noqa: E402

import zoo  # noqa: E402
import zoo.birder as zb  # noqa: E402
from tests.oracle import timm_model, timm_outputs  # noqa: E402
from tests.weights_env import CORE, SPATIAL, add_meta_source, hub  # noqa: E402,F401 (fixture)
from zoo.registry import get_entry  # noqa: E402

ALL = zoo.list_pretrained_models()
SMALL = [n for n in ALL if get_entry(n).variant[0] in "TS"]  # full depth
BIG = [n for n in ALL if n not in SMALL]  # depth 2 (full depth: -m slow)
BIRDER_PE_NETWORKS = [  # birder's own PE architectures: they must stay birder's
    "rope_i_vit_s16_pn_aps_c1", "rope_i_vit_b16_pn_aps_c1", "rope_i_vit_l14_pn_aps_c1",
    "rope_i_vit_reg1_t16_pn_npn_avg_c1", "rope_i_vit_reg1_s16_pn_npn_avg_c1", "rope_i_vit_reg1_b16_pn_npn_avg_c1",
]
# Meta's vision parameter counts without the CLIP projection (DESIGN.md, section 1)
PARAMS = {
    "PE-Core-T16-384": 6_042_240, "PE-Core-S16-384": 23_586_048, "PE-Core-B16-224": 92_886_528,
    "PE-Core-L14-336": 316_102_656, "PE-Core-G14-448": 1_880_066_560,
    "PE-Spatial-T16-512": 5_683_200, "PE-Spatial-S16-512": 21_983_232, "PE-Spatial-B16-512": 86_433_792,
    "PE-Spatial-L14-448": 303_964_160, "PE-Spatial-G14-448": 1_851_887_104,
    "PE-Lang-L14-448": 291_415_040, "PE-Lang-G14-448": 1_740_922_624,
}
TOL = 1e-6


def rand(batch: int, size: tuple[int, int]) -> torch.Tensor:
    return torch.rand(batch, 3, *size)


def check_birder_contract(n: DetectorBackbone, size: tuple[int, int], num_classes: int = 10, pt2: bool = True) -> None:
    """birder's network checks (tests/test_net.py's test_net, _backward, _pt2, test_detection_backbone), over ``n``;
    ``pt2=False`` leaves out the export, as birder's default run does (its test_net_pt2 needs SLOW_TESTS)."""
    P, W, B = n.max_stride, n.embedding_size, 2
    assert isinstance(n.feature_dim, int) and n.feature_dim == W
    json.dumps(n.config)  # serialisable
    out = n(rand(B, size))
    assert out.shape == (B, num_classes) and torch.isfinite(out).all()
    assert n.embedding(rand(B, size)).shape == (B, W)

    n.eval()
    x = rand(B, size)
    with torch.inference_mode():
        features = n.forward_features(x)
        assert torch.equal(n.embedding_from_features(features), n.embedding(x))
    n.train()
    features = n.forward_features(rand(B, size))  # birder's order: a training-mode forward after the inference one
    tokens = (size[0] // P) * (size[1] // P)
    flat = n.flatten_features(features)
    visual = n.flatten_features(features, include_special_tokens=False)
    assert flat.shape == (B, tokens + n.num_special_tokens, W) and visual.shape == (B, tokens, W)
    assert torch.equal(visual, flat[:, n.num_special_tokens :])

    # torch.jit: not scriptable, traced as birder does for such nets (eval), then the trace must agree
    assert n.scriptable is False
    n.eval()
    traced = torch.jit.trace(n, example_inputs=rand(1, size))
    with torch.no_grad():
        assert torch.allclose(traced(x), n(x), atol=1e-5)
        if pt2:  # PT2 export with a dynamic batch dimension
            ep = torch.export.export(n, (rand(2, size),), dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}})
            x3 = rand(3, size)
            assert torch.allclose(ep.module()(x3), n(x3), atol=1e-5)
        # deepcopy after CPU inference (the packed-weight caches are in place)
        twin = copy.deepcopy(n)  # packed anew for this batch: oneDNN's blocking may reorder sums (~1e-7)
        assert torch.allclose(twin(x), n(x), atol=1e-5)
    n.train()

    # detection backbone
    assert len(n.return_stages) == len(n.return_channels)
    maps = n.detection_features(rand(B, size))
    assert list(maps) == n.return_stages
    for stage, ch in zip(n.return_stages, n.return_channels):
        assert maps[stage].shape == (B, ch, size[0] // P, size[1] // P) and torch.isfinite(maps[stage]).all()

    # adjust_size (no gradients touched), then every parameter gets a finite gradient
    new = (size[0] + 2 * P, size[1] + P)
    n.adjust_size(new)
    assert n.size == new
    assert all(p.grad is None and p.grad_fn is None for p in n.parameters())
    n(rand(1, new)).sum().backward()
    for name, p in n.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert n.embedding(rand(1, new)).shape == (1, W)
    n.zero_grad()

    # dynamic size: any multiple of the patch size
    n.set_dynamic_size()
    odd = (size[0] - P, size[1] + 3 * P)
    assert n(rand(1, odd)).shape == (1, num_classes)
    assert n.detection_features(rand(1, odd))[n.return_stages[-1]].shape[-2:] == (odd[0] // P, odd[1] // P)

    n.reset_classifier(20)
    assert n(rand(B, new)).shape == (B, 20)

    # freeze / freeze_stages
    n.freeze()
    assert not any(p.requires_grad for p in n.parameters())
    n.freeze(freeze_classifier=False)
    assert {k for k, p in n.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    n.freeze(unfreeze_features=True)
    trainable = {k.split(".")[1] for k, p in n.named_parameters() if p.requires_grad}
    assert trainable == ({"attn_pool"} if n.body.attn_pool is not None else set()) | (
        {"norm_post"} if n.body.cfg.ln_post else set())
    n.requires_grad_(True)
    n.freeze_stages(0)
    frozen = {k for k, p in n.named_parameters() if not p.requires_grad}
    assert frozen == {"body.patch_embed.weight", "body.pos_embed"} | ({"body.cls_token"} if n.num_special_tokens else set())
    n.freeze_stages(len(n.return_stages))
    assert not any(p.requires_grad for p in n.body.blocks.parameters())
    assert n.classifier.weight.requires_grad


# ------------------------------------------------------------------ registration and name policy
def test_every_checkpoint_is_registered():
    assert sorted(zb.NETWORK_NAMES) == sorted(ALL) and all(zb.NETWORK_NAMES[n] == n for n in ALL)
    assert sorted(registry.list_models(include_filter="*_pe-*")) == sorted(ALL)
    assert set(ALL) <= set(registry.list_models(net_type=DetectorBackbone))
    for name in ALL:
        entry = get_entry(name)
        assert registry.get_default_size(name) == entry.size
        assert registry.registered_configs[name] is zb.NETWORKS[name]  # birder's checkpoints record the name
        assert zb.NETWORKS[name].zoo_name == name


def test_birder_networks_are_never_replaced():
    """birder's own PE networks stay birder's; the architecture names birder lacks become aliases."""
    for arch in BIRDER_PE_NETWORKS:
        cls = registry._get_model_by_name(arch)
        assert not issubclass(cls, zb.PEBirderNet) and cls.__module__.startswith("birder."), arch
    assert zb.ALIASES == {
        "rope_i_vit_t16_pn_aps_c1": "rope_i_vit_t16_pn_aps_c1_pe-core",
        "rope_i_vit_g14_pn_ap_c1": "rope_i_vit_g14_pn_ap_c1_pe-core",
        "rope_i_vit_reg1_l14_pn_npn_avg_c1": "rope_i_vit_reg1_l14_pn_npn_avg_c1_pe-spatial",
        "rope_i_vit_reg1_l14_pn_npn_avg_ls_c1": "rope_i_vit_reg1_l14_pn_npn_avg_ls_c1_pe-lang",
    }  # G14 Spatial and G14 Lang share an architecture name with different depths: no alias
    with torch.device("meta"):
        assert type(registry.net_factory("rope_i_vit_t16_pn_aps_c1", 0)) is zb.NETWORKS["rope_i_vit_t16_pn_aps_c1_pe-core"]


def test_import_registers_without_warnings_and_respects_a_taken_name():
    """In a fresh process: no registry warning, birder's entries untouched; a name already taken is left alone."""
    code = textwrap.dedent("""
        import logging, warnings
        from birder.model_registry import registry
        from birder.net.base import BaseNet
        class Taken(BaseNet):
            pass
        registry.register_model("rope_i_vit_l14_pn_aps_c1_pe-core", Taken)
        before = dict(registry.all_nets)
        logging.basicConfig(level=logging.WARNING, format="%(name)s:%(message)s")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import zoo.birder as zb
        assert not [w for w in caught if "registry" in str(w.filename) or "registered" in str(w.message)], caught
        assert all(registry.all_nets[k] is v for k, v in before.items())
        assert registry.all_nets["rope_i_vit_l14_pn_aps_c1_pe-core"] is Taken
        assert "rope_i_vit_l14_pn_aps_c1_pe-core" not in zb.NETWORK_NAMES and len(zb.NETWORK_NAMES) == 13
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("OK")
    assert "zoo:birder already has a network named rope_i_vit_l14_pn_aps_c1_pe-core" in r.stderr


@pytest.mark.parametrize("name", ALL)
def test_full_architecture_on_meta(name):
    """Every network at full depth (on the meta device): size, widths and Meta's parameter count."""
    entry = get_entry(name)
    with torch.device("meta"):
        n = registry.net_factory(name, 0)
    assert n.default_size == n.size == entry.size and n.max_stride == entry.config.patch_size
    assert n.embedding_size == n.feature_dim == entry.config.width and n.return_channels == [entry.config.width]
    assert n.return_stages == ["neck"] and n.num_special_tokens == entry.config.num_prefix_tokens
    assert len(n.body.blocks) == entry.config.depth
    assert sum(p.numel() for p in n.parameters()) == PARAMS[entry.source.file[:-3].removesuffix("-Tiling")]  # same shapes


# ------------------------------------------------------------------ birder's network checks
TINY = {"depth": 1, "width": 64, "heads": 4, "mlp_dim": 128}  # every configuration's structure, at a toy size


@pytest.mark.parametrize("name", ALL)
def test_birder_contract(name):
    """Every network's configuration (patch size, class token, pooling, ln_post, layer scale) at one block
    of width 64 and a 3x3 patch grid: the same sequence of checks in a fraction of a second each."""
    P = get_entry(name).config.patch_size
    n = registry.net_factory(name, 10, config=TINY, size=(3 * P, 3 * P))
    check_birder_contract(n, n.size, pt2=name in (CORE.name, SPATIAL.name))  # export: two configurations here, all under -m slow


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_birder_contract_full(name):
    """Every network at full depth and its default (native) size."""
    n = registry.net_factory(name, 10)
    check_birder_contract(n, n.default_size)


def test_out_indices_stages():
    n = registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, config={"out_indices": [3, 7, -1]}, size=(128, 128))
    assert n.return_stages == ["block3", "block7", "block11"] and n.return_channels == [192] * 3
    x = rand(1, (128, 128))
    maps = n.detection_features(x)
    ref = n.body.detection_features(x, layers=[3, 7, 11])  # the zoo's block taps
    assert list(maps) == n.return_stages and all(torch.equal(maps[k], ref[k]) for k in maps)
    n.freeze_stages(2)
    assert [any(p.requires_grad for p in b.parameters()) for b in n.body.blocks] == [False] * 8 + [True] * 4
    with pytest.raises(ValueError, match="out_indices"):
        registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, config={"out_indices": [12]})


def test_bad_config_and_sizes():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['clip_dim'\]"):
        registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, config={"clip_dim": 512})
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, size=(100, 100))
    n = registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, config={"depth": 1})
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        n.adjust_size((392, 392))
    with pytest.raises(ValueError, match="3 channels"):
        registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, input_channels=1)


# ------------------------------------------------------------------ birder detectors
@pytest.mark.parametrize("detector", ["faster_rcnn", pytest.param("vitdet", marks=pytest.mark.slow)])
def test_detector_with_pe_spatial_t16(detector):
    """A birder detector over the PE-Spatial T16 backbone: one training step, then detections in eval."""
    size = (128, 128)
    backbone = registry.net_factory("rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial", 0, size=size)
    det = registry.detection_net_factory(detector, 3, backbone, size=size)
    images = torch.rand(2, 3, *size)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[50.0, 40.0, 120.0, 110.0], [5.0, 5.0, 60.0, 60.0]]), "labels": torch.tensor([2, 3])},
    ]
    before = backbone.body.blocks[0].attn.qkv.weight.detach().clone()
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.01)
    det.train()
    _, losses = det(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    opt.step()
    assert not torch.equal(before, backbone.body.blocks[0].attn.qkv.weight)  # the backbone trained
    det.eval()
    with torch.no_grad():
        detections, _ = det(images)
    assert len(detections) == 2
    for d in detections:
        assert set(d) >= {"boxes", "labels", "scores"} and d["boxes"].shape[-1] == 4
        assert len(d["boxes"]) == len(d["labels"]) == len(d["scores"])


# ------------------------------------------------------------------ pretrained weights
@pytest.mark.parametrize("entry", [CORE, SPATIAL], ids=["core", "spatial"])
def test_pretrained_matches_zoo(entry, hub, tmp_path):
    """Same embedding and detection features as zoo.load_pretrained_model (≤1e-6), native size and adjusted."""
    add_meta_source(hub, entry, tmp_path)
    net, info = zb.load_pretrained_model(entry.name, inference=True)
    ref, _ = zoo.load_pretrained_model(entry.name, inference=True)
    assert isinstance(info, BirderModelInfo) and type(net) is zb.NETWORKS[entry.name]
    assert info.class_to_idx == {} and info.custom_config is None
    assert birder.get_size_from_signature(info.signature) == entry.size
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    assert "clip_proj.weight" not in net.body.state_dict()
    for k, v in net.body.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    x = torch.randn(2, 3, *entry.size)
    with torch.no_grad():
        assert (net.embedding(x) - ref.embedding(x)).abs().max() <= TOL
        assert (net(x) - ref(x)).abs().max() <= TOL
        assert (net.detection_features(x)["neck"] - ref.detection_features(x)["neck"]).abs().max() <= TOL
    new = (entry.size[0] + 32, entry.size[1] - 64)
    net.adjust_size(new)  # the zoo's net takes any size as it is
    x = torch.randn(1, 3, *new)
    with torch.no_grad():
        assert (net.embedding(x) - ref.embedding(x)).abs().max() <= TOL
        assert (net.detection_features(x)["neck"] - ref.detection_features(x)["neck"]).abs().max() <= TOL
    # new_size at load time: in the signature, same numbers as the zoo's new_size load
    net2, info2 = zb.load_pretrained_model(entry.name, inference=True, new_size=new)
    ref2, info_ref2 = zoo.load_pretrained_model(entry.name, inference=True, new_size=new)
    assert net2.size == new and info2.signature == info_ref2.signature
    assert birder.get_size_from_signature(info2.signature) == new
    with torch.no_grad():
        assert (net2.embedding(x) - ref2.embedding(x)).abs().max() <= TOL
        assert (net2.detection_features(x)["neck"] - ref2.detection_features(x)["neck"]).abs().max() <= TOL
    # trainable load, bfloat16, multi-stage features
    net3, info3 = zb.load_pretrained_model(entry.name, dtype=torch.bfloat16, custom_config={"out_indices": [1, -1]})
    assert net3.training and all(p.requires_grad for p in net3.parameters())
    assert {p.dtype for p in net3.parameters()} == {torch.bfloat16} and info3.custom_config == {"out_indices": [1, -1]}
    assert net3.return_stages == ["block1", f"block{entry.config.depth - 1}"]


def test_pretrained_errors(hub, tmp_path):
    with pytest.raises(KeyError, match="rope_i_vit_t16_pn_aps_c1_pe-core"):
        zb.load_pretrained_model("rope_i_vit_t16_pn_aps_c1_pe-cor")
    with pytest.raises(ValueError, match=r"custom_config key\(s\) \['depth'\]"):
        zb.load_pretrained_model(CORE.name, custom_config={"depth": 2})
    with pytest.raises(ValueError, match="file_format 'pt2'"):
        zb.load_pretrained_model(CORE.name, file_format="pt2")


@pytest.mark.parametrize("entry", [CORE, SPATIAL], ids=["core", "spatial"])
def test_seed_card_snippet(entry, hub, tmp_path):
    """The seed card's birder snippet, loading through zoo.birder, offline with only Meta's checkpoint cached."""
    vision = add_meta_source(hub, entry, tmp_path)
    image_path = tmp_path / "image.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(image_path)
    image = str(image_path)

    import birder
    from birder.inference.classification import infer_image

    (net, model_info) = zb.load_pretrained_model(entry.name, inference=True)
    size = birder.get_size_from_signature(model_info.signature)
    transform = birder.classification_transform(size, model_info.rgb_stats)
    (out, embedding) = infer_image(net, image, transform, return_embedding=True)
    features = net.detection_features(transform(Image.open(image)).unsqueeze(0))
    shapes = [(k, v.size()) for k, v in features.items()]

    W, G = entry.config.width, entry.config.grid
    assert isinstance(embedding, np.ndarray) and embedding.shape == (1, W) and out.shape == (1, W)
    assert shapes == [("neck", torch.Size([1, W, G, G]))]  # the card's printed example
    x = transform(Image.open(image)).unsqueeze(0)
    ref = timm_outputs(timm_model(entry, entry.config, vision, *size), x)  # independent implementation
    assert ref["embedding"].abs().mean() > 0.1
    assert np.abs(embedding - ref["embedding"].numpy()).max() <= 1e-5
    neck = ref["tokens"][:, entry.config.num_prefix_tokens :].transpose(1, 2).reshape(1, W, G, G)
    assert (features["neck"] - neck).abs().max() <= 1e-5


def test_birder_checkpoint_round_trip(hub, tmp_path):
    """A fine-tuned zoo network saved in birder's checkpoint layout loads back through birder's own load_model."""
    from birder.common import fs_ops
    from birder.net.base import get_signature

    add_meta_source(hub, SPATIAL, tmp_path)
    net, info = zb.load_pretrained_model(SPATIAL.name, new_size=(256, 256))
    net.reset_classifier(5)
    signature = get_signature((1, 3, 256, 256), 5)
    path = tmp_path / "finetuned.pt"
    torch.save({"state": net.state_dict(), "task": net.task, "signature": signature,
                "class_to_idx": {str(i): i for i in range(5)}, "rgb_stats": info.rgb_stats}, path)
    loaded, loaded_info = fs_ops.load_model(torch.device("cpu"), SPATIAL.name, path=path, inference=True)
    assert type(loaded) is zb.NETWORKS[SPATIAL.name] and loaded.size == (256, 256)
    x = torch.rand(1, 3, 256, 256)
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x)) and loaded(x).shape == (1, 5)


def test_birder_options_on_zoo_networks():
    """birder's own options work on the plugin's nets (issue 21): no crash on a repeated stage, checkpointing, head options."""
    with pytest.raises(ValueError, match="same block twice"):
        registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 0, config={"out_indices": [-1, 11]}, size=(64, 64))
    n = registry.net_factory("rope_i_vit_t16_pn_aps_c1_pe-core", 3, config={"mlp_head": True, "head_bias": False}, size=(64, 64))
    assert isinstance(n.classifier, torch.nn.Sequential) and n.classifier[-1].bias is None
    calls = []
    for blk in n.body.blocks:
        blk.register_forward_pre_hook(lambda *_: calls.append(1))
    n.set_grad_checkpointing()
    n.train()
    n(torch.rand(2, 3, 64, 64)).sum().backward()
    assert len(calls) == 2 * len(n.body.blocks)  # each block ran again in the backward pass
    with pytest.raises(ValueError, match="segments"):
        n.set_grad_checkpointing(segments=2)
