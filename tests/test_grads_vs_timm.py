"""The plain (unpacked) path and its gradients against timm on the same weights (issue 16 item 1).

Training, float16 and CUDA run ``Linear``'s plain ``F.linear`` branch, not the oneDNN-packed one;
here that branch (``Linear.pack = False``) and the gradients of a loss through it are compared value
by value with timm's implementation of the same tower loaded with the same Meta-layout weights.
"""

import dataclasses

import pytest
import torch

import zoo
from tests.oracle import timm_model, unit_config
from zoo.nets.pe_vit import Linear
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_vision_state_dict
from zoo.weights import meta_to_zoo

CORE = "rope_i_vit_t16_pn_aps_c1_pe-core"
SPATIAL = "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial"
SPATIAL_G = "rope_i_vit_g14_pn_npn_avg_ls_c1_pe-spatial"  # layer scale, no class token
TOL = 1e-5
# zoo name -> timm name where they differ (the rest are the same)
RENAMES = {"patch_embed.weight": "patch_embed.proj.weight", "norm_post.weight": "norm.weight",
           "norm_post.bias": "norm.bias", "attn_pool.probe": "attn_pool.latent", "clip_proj.weight": "head.weight"}


def pair(name, depth=None, size=None):
    """(zoo net, timm model, input size) on the same Meta-layout weights; ``size`` makes it the native size of both."""
    entry = get_entry(name)
    cfg = unit_config(entry)
    if depth:
        cfg = dataclasses.replace(cfg, depth=depth)
    if size:
        cfg = dataclasses.replace(cfg, image_size=size)
    meta = meta_vision_state_dict(cfg, seed=11)
    net = zoo.PEViT(cfg)
    net.load_state_dict(meta_to_zoo(meta, cfg))
    size = cfg.image_size  # native: the position embeddings of both are the same parameters
    return net.eval(), timm_model(entry, cfg, meta, size, size), size


def outputs(net, ref, x):
    """(zoo, timm): the CLIP embedding for Core, all tokens for Spatial."""
    if net.clip_proj is not None:
        return net.clip_embedding(x), ref(x)
    return net.forward_features(x), ref.forward_features(x)


@pytest.fixture
def unpacked(monkeypatch):
    monkeypatch.setattr(Linear, "pack", False)


def check(name, depth=None, size=None):
    net, ref, size = pair(name, depth, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the no-grad forward, on the plain branch
        ours, theirs = outputs(net, ref, x)
    assert theirs.abs().mean() > 0.05
    assert (ours - theirs).abs().max() <= TOL
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ours, theirs = outputs(net, ref, xs[0])[0], outputs(net, ref, xs[1])[1]
    probe = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    (ours * probe).sum().backward()
    (theirs * probe).sum().backward()
    assert (xs[0].grad - xs[1].grad).abs().max() <= 1e-4 * xs[1].grad.abs().max()
    theirs_params = dict(ref.named_parameters())
    compared = 0
    for n, p in net.named_parameters():
        t = theirs_params[RENAMES.get(n, n)]
        assert p.grad is not None and t.grad is not None, n
        g, tg = p.grad, t.grad.reshape(p.grad.shape)
        assert (g - tg).abs().max() <= 1e-4 * tg.abs().max() + 1e-9, n
        compared += 1
    assert compared == len(list(net.parameters()))


@pytest.mark.parametrize("name", [CORE, SPATIAL])
def test_plain_path_and_gradients_match_timm(name, unpacked):
    """At 64 px (a 4x4 grid as the native size of both): the same code path as the -m slow case, in a second."""
    check(name, depth=3, size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", [CORE, SPATIAL])
def test_plain_path_and_gradients_match_timm_native_size(name, unpacked):
    check(name, depth=3)


@pytest.mark.slow
def test_plain_path_and_gradients_match_timm_layer_scale(unpacked):
    check(SPATIAL_G, depth=2)
