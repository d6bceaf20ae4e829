"""zoo.show: PCA of patch tokens (against scikit-learn), attention rollout (against timm's attention
weights), text heat maps, drawn detections, ``python -m zoo show`` and birder's introspection on zoo nets."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.oracle import timm_model, unit_config
from tests.weights_env import CORE, SPATIAL, add_meta_source, hub  # noqa: F401 (fixture)
from zoo import show
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_vision_state_dict
from zoo.weights import meta_to_zoo

G14_SPATIAL = "rope_i_vit_g14_pn_npn_avg_ls_c1_pe-spatial"  # no class token


@functools.cache
def net_and_meta(name: str) -> tuple[zoo.PEViT, dict]:
    cfg = unit_config(get_entry(name))
    cfg = dataclasses.replace(cfg, depth=1 if cfg.width > 1000 else 4)  # enough blocks for a rollout, fast
    meta = meta_vision_state_dict(cfg, seed=5)
    net = zoo.PEViT(cfg).eval()
    net.load_state_dict(meta_to_zoo(meta, cfg))
    return net, meta


def batch(n: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_feature_pca_equals_sklearn_jointly_fitted():
    decomposition = pytest.importorskip("sklearn.decomposition")
    net, _ = net_and_meta(SPATIAL.name)
    x = batch(2, 96, 112)
    for layer in (None, 2):
        raw = show.feature_pca(net, x, layer=layer, scale=False)
        with torch.no_grad():
            key = "neck" if layer is None else f"block{layer}"
            fmap = net.detection_features(x, layers=None if layer is None else [layer])[key]
        tokens = fmap.flatten(2).transpose(1, 2).reshape(-1, fmap.shape[1]).double().numpy()
        ref = decomposition.PCA(n_components=3).fit_transform(tokens)  # fitted on both images' tokens at once
        ours = np.concatenate([r.reshape(-1, 3) for r in raw])
        assert raw[0].shape == (6, 7, 3) and len(raw) == 2
        for c in range(3):
            assert abs(np.corrcoef(ours[:, c], ref[:, c])[0, 1]) >= 0.999
    scaled = show.feature_pca(net, x)
    both = np.stack(scaled)
    assert both.min() == 0.0 and both.max() == 1.0  # scaled jointly: 0 and 1 are reached over both images
    for c in range(3):
        assert both[..., c].min() == 0.0 and both[..., c].max() == 1.0


def test_feature_pca_background_mask_follows_the_border_rule():
    net, _ = net_and_meta(SPATIAL.name)
    x = batch(1, 96, 96)
    raw = show.feature_pca(net, x, scale=False)[0]
    first = raw[..., 0]
    border = np.concatenate([first[0], first[-1], first[:, 0], first[:, -1]])
    foreground = first > 0 if border.mean() <= 0 else first < 0
    masked = show.feature_pca(net, x, mask_background=True)[0]
    assert ((masked.sum(-1) > 0) <= foreground).all() and (masked[~foreground] == 0).all()


def timm_attention(name: str, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's softmax attention [B, heads, N, N] from timm's PE model on the same weights."""
    net, meta = net_and_meta(name)
    model = timm_model(get_entry(name), net.cfg, meta, *x.shape[-2:])
    captured = []
    for blk in model.blocks:
        blk.attn.fused_attn = False  # timm then computes the weights explicitly and passes them to attn_drop
        blk.attn.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with torch.no_grad():
        model.forward_features(x)
    return captured


def rollout_reference(weights: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Abnar & Zuidema's rollout, written out: A' = (mean_heads A + I) / 2, rows normalised, R = A'_L ... A'_1."""
    n = weights[0].shape[-1]
    joint = torch.eye(n, dtype=torch.float64).expand(weights[0].shape[0], n, n)
    for a in weights:
        a = (a.double().mean(1) + torch.eye(n, dtype=torch.float64)) / 2
        a = a / a.sum(-1, keepdim=True)
        joint = torch.bmm(a, joint)
    row = joint[:, 0] if prefix else joint.mean(1)
    return row[:, prefix:]


@pytest.mark.parametrize("name", [SPATIAL.name, CORE.name, G14_SPATIAL])
def test_attention_rollout_equals_timm_weights(name):
    net, _ = net_and_meta(name)
    P = net.patch_size
    x = batch(2, 4 * P, 5 * P)
    ref_weights = timm_attention(name, x)
    ours, _ = show.attention_weights(net, x)
    assert len(ours) == len(ref_weights)
    for i, ref in enumerate(ref_weights):
        assert (ours[i] - ref).abs().max() <= 1e-5
    prefix = net.cfg.num_prefix_tokens
    maps = show.attention(net, x, method="rollout")
    ref = rollout_reference(ref_weights, prefix).float()
    assert maps[0].shape == (4, 5)
    assert np.abs(np.stack(maps).reshape(2, -1) - ref.numpy()).max() <= 1e-5
    middle = show.attention(net, x, layer=0, method="rollout")
    assert np.abs(np.stack(middle).reshape(2, -1) - rollout_reference(ref_weights[:1], prefix).numpy()).max() <= 1e-5
    if net.attn_pool is None:
        last = np.stack(show.attention(net, x, method="last")).reshape(2, -1)
        a = ref_weights[-1].mean(1)
        expect = (a[:, 0] if prefix else a.mean(1))[:, prefix:]
        assert np.abs(last - expect.numpy()).max() <= 1e-5


def test_probe_attention_is_the_pool_of_the_embedding():
    """The probe's weights reproduce the pooled vector before the pool's MLP (the text map's premise)."""
    net, _ = net_and_meta(CORE.name)
    x = batch(2, 64, 48)
    pre_mlp = []
    hook = net.attn_pool.norm.register_forward_pre_hook(lambda _m, args: pre_mlp.append(args[0]))
    with torch.no_grad():
        net.embedding(x)
        tokens = net.forward_features(x)
    hook.remove()
    pool, W = net.attn_pool, net.embed_dim
    hd = W // pool.heads
    with torch.no_grad():
        q = pool.q(pool.probe).reshape(pool.heads, hd)
        k, v = pool.kv(tokens).split(W, dim=-1)
        k = k.reshape(2, -1, pool.heads, hd)
        v = v.reshape(2, -1, pool.heads, hd)
        a = torch.softmax(torch.einsum("hd,bnhd->bhn", q, k) / hd**0.5, dim=-1)
        mixed = torch.einsum("bhn,bnhd->bhd", a, v).reshape(2, W)
        assert (pool.proj(mixed) - pre_mlp[0]).abs().max() <= 1e-5
    probe, _ = show.probe_attention(net, x)
    assert (probe - a.mean(1)[:, 1:]).abs().max() <= 1e-6
    maps = show.attention(net, x, method="last")
    assert maps[0].shape == (4, 3)


def test_looking_leaves_the_forward_bit_identical():
    net, _ = net_and_meta(CORE.name)
    x = batch(1, 64, 64)
    with torch.no_grad():
        before = net.forward_features(x)
    show.attention(net, x)
    show.feature_pca(net, x, layer=2)
    show.attention(net, x, method="last")
    with torch.no_grad():
        after = net.forward_features(x)
    assert torch.equal(before, after)
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in net.blocks)


@pytest.fixture(scope="module")
def clip_model():
    from zoo.nets.text import TextConfig

    text = TextConfig(width=64, depth=1, heads=2, mlp_dim=128, context_length=32, vocab_size=49408)  # small, real vocabulary
    model = zoo.PECLIP(net_and_meta(CORE.name)[0].cfg, text).eval()
    torch.manual_seed(0)
    for p in model.parameters():  # O(1) activations and distinct text embeddings
        p.data.normal_(0, 0.05) if p.dim() > 1 else None
    return model


def test_text_heatmap_both_methods(clip_model):
    x = batch(2, 64, 80)
    value = show.text_heatmap(clip_model, x, "a dog", method="value")
    grad = show.text_heatmap(clip_model, x, "a dog", method="gradient")
    assert value[0].shape == grad[0].shape == (4, 5)
    assert all(np.isfinite(m).all() for m in value + grad) and all((m >= 0).all() for m in grad)
    assert np.abs(value[0]).max() <= 1.0 + 1e-6  # cosine similarities
    other = show.text_heatmap(clip_model, x, "a diagram of a circuit", method="value")
    assert not np.allclose(value[0], other[0])  # the text matters
    with pytest.raises(ValueError, match="empty"):
        show.text_heatmap(clip_model, x, "   ")
    spatial, _ = net_and_meta(SPATIAL.name)
    with pytest.raises(ValueError, match="PE-Core"):
        show.patch_clip_embeddings(spatial, x)


def test_draw_detections_draws_only_kept_boxes():
    image = Image.new("RGB", (80, 60), "white")
    boxes = torch.tensor([[5.0, 5.0, 30.0, 30.0], [40.0, 10.0, 70.0, 50.0]])
    out = show.draw_detections(image, boxes, labels=[1, 2], scores=[0.9, 0.2], class_names=["bg", "cat", "dog"],
                               score_threshold=0.5)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert (out[5, 5:30] != 255).any()  # the kept box's edge is drawn
    assert (out[10, 41:70] == 255).all()  # the low-scoring box is not
    with pytest.raises(ValueError, match="one score per box"):
        show.draw_detections(image, boxes, scores=[0.9])


def test_overlay_and_contact_sheet_sizes():
    image = Image.new("RGB", (50, 40), "gray")
    pic = show.overlay(image, np.random.rand(4, 5))
    assert pic.size == (100, 40)
    pca = show.overlay(image, np.random.rand(4, 5, 3))
    assert pca.size == (100, 40)
    sheet = show.contact_sheet([pic, pca, pic])
    assert sheet.size == (100, 120)
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        show.overlay(image, np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def images(tmp_path):
    paths = []
    for i, size in enumerate([(70, 50), (60, 90)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def run_cli(*args: str) -> int:
    from zoo.cli import main

    return main([str(a) for a in args])


def test_cli_show_pca_and_attention(hub, tmp_path, images):
    add_meta_source(hub, SPATIAL, tmp_path)
    out = tmp_path / "pca.png"
    assert run_cli("show", SPATIAL.name, images[0], "--what", "pca", "--out", out, "--size", 64, "--layer", 3) == 0
    assert Image.open(out).size == (140, 50)  # original beside the blend
    folder = tmp_path / "maps"
    assert run_cli("show", SPATIAL.name, *images, "--what", "attention", "--out", folder, "--size", 64) == 0
    assert Image.open(folder / "img0.attention.png").size == (140, 50)
    assert Image.open(folder / "img1.attention.png").size == (120, 90)
    assert Image.open(folder / "contact_sheet.png").size == (140, 180)  # one sheet: a column of cells of the largest size


def test_cli_show_detections(hub, tmp_path, images):
    from zoo.detection import faster_rcnn

    add_meta_source(hub, SPATIAL, tmp_path)
    detector = faster_rcnn(SPATIAL.name, num_classes=3, pretrained=False, min_size=64, max_size=64)
    weights = tmp_path / "detector.pt"
    torch.save(detector.state_dict(), weights)
    out = tmp_path / "det.png"
    assert run_cli("show", SPATIAL.name, images[1], "--what", "detections", "--detector-weights", weights,
                   "--out", out, "--score-threshold", 0.0, "--size", 64) == 0
    assert Image.open(out).size == (120, 90)


def test_cli_show_refusals(hub, tmp_path, images, capsys):
    add_meta_source(hub, SPATIAL, tmp_path)
    assert run_cli("show", SPATIAL.name, images[0], "--what", "text", "--text", "a dog", "--out", tmp_path / "t.png") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PE-Core" in err
    assert run_cli("show", SPATIAL.name, images[0], "--what", "detections", "--out", tmp_path / "d.png") == 1
    assert "--detector-weights" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "d.png").exists()


# ------------------------------------------------------------------------- birder introspection
@pytest.mark.parametrize("order", ["pca_then_gradcam", "gradcam_then_pca"])
def test_birder_feature_pca_and_gradcam_on_a_zoo_net(order):
    pytest.importorskip("birder")
    from birder.introspection import FeaturePCA, GradCAM
    from birder.model_registry import registry

    import zoo.birder  # noqa: F401 (registers the zoo's networks)

    net = registry.net_factory(SPATIAL.name, 4, size=(64, 64)).eval()
    transform = show._transform_of(_with_cfg(net))
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    stats = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def pca():
        result = FeaturePCA(net, torch.device("cpu"), transform, stats)(image)
        assert result.raw_output.shape[-1] == 3

    def gradcam():
        target = net.body.blocks[-1]
        grid = 64 // net.max_stride
        reshape = lambda t: t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, grid, grid)  # noqa: E731
        result = GradCAM(net, torch.device("cpu"), transform, stats, target, reshape_transform=reshape)(image)
        assert np.isfinite(result.raw_output).all()

    steps = [pca, gradcam] if order == "pca_then_gradcam" else [gradcam, pca]
    for step in steps:
        step()


def _with_cfg(net):
    net.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return net
