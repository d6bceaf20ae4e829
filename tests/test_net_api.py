"""The net's public surface: parameter counts, dense features, heads, dtypes, gradients, input errors."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import zoo
from tests.conftest import ARCHITECTURES
from tests.oracle import timm_model, timm_name, unit_config
from zoo.weights import meta_to_zoo
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_vision_state_dict

TINY = "rope_i_vit_t16_pn_aps_c1_pe-core"
TINY_SPATIAL = "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial"


def timm_parameters(entry, num_classes):
    """Parameter count of timm's model of ``entry`` without the head's bias (Meta's CLIP projection has none);
    built on the meta device: no memory."""
    with torch.device("meta"):
        model = timm.create_model(timm_name(entry), pretrained=False, num_classes=num_classes)
    return sum(p.numel() for name, p in model.named_parameters() if name != "head.bias")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parameter_counts_match_timm(name):
    """The vision tower, and for Core the tower with its CLIP projection, counted by timm (an independent oracle)."""
    entry = get_entry(name)
    net = zoo.create_model(name, device="meta")
    assert next(net.parameters()).device.type == "meta"
    assert net.backbone_parameters() == timm_parameters(entry, 0)
    total = sum(p.numel() for p in net.parameters())
    assert total == timm_parameters(entry, entry.config.clip_dim or 0)
    assert total - net.backbone_parameters() == entry.config.width * (entry.config.clip_dim or 0)


def loaded(name, depth=None):
    entry = get_entry(name)
    cfg = unit_config(entry)
    meta = meta_vision_state_dict(cfg, seed=5)
    net = zoo.PEViT(cfg).eval()
    net.load_state_dict(meta_to_zoo(meta, cfg))
    return entry, cfg, meta, net


@pytest.mark.parametrize("name", [TINY, TINY_SPATIAL])
def test_detection_features(name):
    entry, cfg, meta, net = loaded(name)
    x = torch.randn(2, 3, 192, 256)
    with torch.no_grad():
        feats = net.detection_features(x)
        assert list(feats) == ["neck"]
        assert feats["neck"].shape == (2, cfg.width, 12, 16)
        tokens = net.forward_features(x)
        assert torch.allclose(feats["neck"], tokens[:, 1:].transpose(1, 2).reshape(2, -1, 12, 16))
        picked = net.detection_features(x, layers=[2, -1, 5])
        assert list(picked) == ["block2", "block11", "block5"]
        assert all(v.shape == (2, cfg.width, 12, 16) for v in picked.values())
        # independent check: timm's intermediate block outputs (no final norm)
        ref = timm_model(entry, cfg, meta, 192, 256).forward_intermediates(
            x, indices=[2, 5, 11], norm=False, output_fmt="NCHW", intermediates_only=True
        )
        for got, want in zip([picked["block2"], picked["block5"], picked["block11"]], ref):
            assert (got - want).abs().max() <= 1e-5
    if not cfg.ln_post:
        assert torch.equal(picked["block11"], feats["neck"])


def test_detection_features_bad_layers():
    net = zoo.create_model(TINY)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"out of range.*12 blocks"):
        net.detection_features(x, layers=[12])
    with pytest.raises(ValueError, match="at least one"):
        net.detection_features(x, layers=[])
    with pytest.raises(TypeError, match="block index or a sequence"):
        net.detection_features(x, layers=2.0)


def test_detection_features_numpy_and_torch_indices():
    """numpy and torch integers, alone or in arrays, name blocks as ints do (issue 21)."""
    net = zoo.create_model(TINY)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = net.detection_features(x, layers=[3, 1])
        for layers in (np.array([3, 1]), torch.tensor([3, -11]), [np.int64(3), np.int32(1)]):
            got = net.detection_features(x, layers=layers)
            assert list(got) == ["block3", "block1"] and all(torch.equal(got[k], want[k]) for k in got)
        one = net.detection_features(x, layers=np.int64(3))
        assert list(one) == ["block3"] and torch.equal(one["block3"], want["block3"])
        assert list(net.detection_features(x, layers=torch.tensor(-1))) == ["block11"]


def test_clip_embedding_and_head():
    _, cfg, _, net = loaded(TINY)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        emb = net.embedding(x)
        assert torch.equal(net(x), emb)
        assert torch.allclose(net.clip_embedding(x), emb @ net.clip_proj.weight.t(), atol=1e-6)
    net.reset_classifier(7)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, net.head(emb), atol=1e-6)
    net.reset_classifier(0)
    assert isinstance(net.head, torch.nn.Identity)
    spatial = zoo.create_model(TINY_SPATIAL)
    with pytest.raises(ValueError, match="no CLIP projection"):
        spatial.clip_embedding(x)


def test_training_mode_gradients_flow():
    net = zoo.create_model(TINY, num_classes=3).train()
    x = torch.randn(2, 3, 48, 64)
    loss = F.cross_entropy(net(x), torch.tensor([0, 2]))
    loss.backward()
    for pname, p in net.named_parameters():
        if pname.startswith("clip_proj"):
            assert p.grad is None
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_bfloat16_agrees_with_float32(name):
    _, cfg, _, net = loaded(name)
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        ref = net.forward_features(x)
        net_bf16 = net.to(torch.bfloat16)
        out = net_bf16.forward_features(x)  # float32 input is cast to the net's dtype
        assert out.dtype == torch.bfloat16
        emb = net_bf16.embedding(x.bfloat16())
    cos = F.cosine_similarity(out.float().flatten(1), ref.flatten(1)).min()
    assert cos >= 0.999
    ref_emb = net.float().embedding(x)
    assert F.cosine_similarity(emb.float(), ref_emb).min() >= 0.999


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 64, 64), "4-D image batch"),
        ((1, 1, 64, 64), "3 \\(RGB\\) channels"),
        ((1, 4, 64, 64), "3 \\(RGB\\) channels"),
        ((1, 3, 60, 64), "not a multiple of the patch size 16"),
        ((1, 3, 64, 70), "not a multiple of the patch size 16"),
    ],
)
def test_bad_inputs_raise(shape, message):
    net = zoo.create_model(TINY)
    with pytest.raises(ValueError, match=message):
        net.embedding(torch.randn(shape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    _, cfg, _, net = loaded(TINY)
    x = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        ref = net.embedding(x)
        out = net.to("cuda", dtype).embedding(x.cuda()).float().cpu()
    assert F.cosine_similarity(out, ref).min() >= 0.999
