"""The zoo net reproduces timm's PE towers (an independent oracle) for all 12 checkpoints."""

import functools

import pytest
import torch

import zoo
from tests.conftest import ARCHITECTURES
from tests.oracle import timm_model, timm_outputs, unit_config
from zoo.weights import meta_to_zoo
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_vision_state_dict

TOL = 1e-5
SIZES = ["native", "larger", "non-square"]


def size_of(cfg, kind):
    P, G = cfg.patch_size, cfg.grid
    return {"native": (G * P, G * P), "larger": ((G + 1) * P, (G + 1) * P), "non-square": ((G - 3) * P, (G + 1) * P)}[kind]


@functools.lru_cache(maxsize=1)  # one model at a time: the three sizes of a name run in a row
def zoo_net_and_meta(name):
    cfg = unit_config(get_entry(name))
    meta = meta_vision_state_dict(cfg, seed=3)
    net = zoo.PEViT(cfg).eval()
    net.load_state_dict(meta_to_zoo(meta, cfg))
    return net, meta


@pytest.mark.parametrize("kind", SIZES)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_matches_timm(name, kind):
    entry = get_entry(name)
    net, meta = zoo_net_and_meta(name)
    cfg = net.cfg
    h, w = size_of(cfg, kind)
    x = torch.randn(2 if kind == "native" else 1, 3, h, w)
    ref = timm_outputs(timm_model(entry, cfg, meta, h, w), x)
    assert ref["tokens"].abs().mean() > 0.1  # random weights give O(1) activations: a mismatch cannot hide
    with torch.no_grad():
        tokens = net.forward_features(x)
        emb = net.embedding(x)
        assert tokens.shape == ref["tokens"].shape
        assert (tokens - ref["tokens"]).abs().max() <= TOL
        assert emb.shape == (x.shape[0], cfg.width)
        assert (emb - ref["embedding"]).abs().max() <= TOL
        if cfg.clip_dim:
            clip = net.clip_proj(emb)  # clip_embedding(x) == clip_proj(embedding(x)): see test_net_api
            assert clip.shape == (x.shape[0], cfg.clip_dim)
            assert (clip - ref["clip"]).abs().max() <= TOL
