"""zoo.optimize: compiled outputs match timm and the eager net, one graph per shape, eager fallback."""

import dataclasses
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import zoo
from tests.oracle import timm_model, timm_outputs
from tests.weights_env import CORE, hub, write_meta_checkpoint  # noqa: F401 (fixture)
from zoo.__main__ import main
from zoo.weights import convert_checkpoint, meta_to_zoo
from zoo.optimize import OptimizedNet
from zoo.paths import weights_dir
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_vision_state_dict

TINY = "rope_i_vit_t16_pn_aps_c1_pe-core"
EMBED_CLI = "zoo.collection.embed"  # where `python -m zoo embed` takes its OPTIMIZE_MIN_IMAGES
OPTIMIZE = importlib.import_module("zoo.optimize")  # the module (zoo.optimize is also the function)


def small(seed=7, depth=1):
    """T16 cut to ``depth`` blocks (compiles fast), with Meta-layout weights."""
    entry = get_entry(TINY)
    cfg = dataclasses.replace(entry.config, depth=depth)
    meta = meta_vision_state_dict(cfg, seed=seed)
    net = zoo.PEViT(cfg).eval()
    net.load_state_dict(meta_to_zoo(meta, cfg))
    return entry, cfg, meta, net


COMPILED = pytest.mark.filterwarnings("error")  # a fallback to eager warns: here it fails the test


@COMPILED
def test_compiled_float32_matches_timm_and_eager_one_graph_per_shape():
    torch._dynamo.reset()
    stats = torch._dynamo.utils.counters["stats"]
    entry, cfg, meta, net = small()
    fast = zoo.optimize(net, method="embedding", mode="compile")
    assert fast.compiled
    x = torch.randn(2, 3, 64, 64)
    out = fast(x)
    assert fast.compiled  # still compiled after the first call: no fallback
    ref = timm_outputs(timm_model(entry, cfg, meta, 64, 64), x)["embedding"]
    assert (out - ref).abs().max() <= 1e-5
    with torch.no_grad():
        assert (out - net.embedding(x)).abs().max() <= 1e-5
    graphs = stats["unique_graphs"]
    assert graphs >= 1
    fast(torch.randn(2, 3, 64, 64))  # same shape: the cached graph, no recompile
    assert stats["unique_graphs"] == graphs
    y = torch.randn(1, 3, 48, 80)  # a new shape gets its own graph (RoPE tables and position grid differ)
    out_y = fast(y)
    assert stats["unique_graphs"] > graphs
    assert (out_y - timm_outputs(timm_model(entry, cfg, meta, 48, 80), y)["embedding"]).abs().max() <= 1e-5
    assert fast.compiled


@COMPILED
def test_compiled_bfloat16_agrees_with_float32():
    torch._dynamo.reset()
    stats = torch._dynamo.utils.counters["stats"]
    _, _, _, net = small()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net.forward_features(x)
    fast = zoo.optimize(net.to(torch.bfloat16), method="forward_features", mode="compile")
    out = fast(x.bfloat16())
    assert fast.compiled and stats["unique_graphs"] >= 1  # the compiled graph ran, no eager fallback
    assert out.dtype == torch.bfloat16
    assert F.cosine_similarity(out.float().flatten(1), ref.flatten(1)).min() >= 0.999


def test_falls_back_to_eager_when_compile_is_unavailable(monkeypatch):
    def no_compile(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported here")

    monkeypatch.setattr(torch, "compile", no_compile)
    _, _, _, net = small()
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable.*eager"):
        fast = zoo.optimize(net, method="clip_embedding", mode="compile")
    assert not fast.compiled
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fast(x), net.clip_embedding(x))


def test_falls_back_to_eager_when_compilation_fails_at_the_first_call(monkeypatch):
    def broken_compiler(fn, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compiler)
    _, _, _, net = small()
    fast = zoo.optimize(net, mode="compile")
    x = torch.randn(1, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        out = fast(x)
    assert not fast.compiled
    with torch.no_grad():
        assert torch.equal(out, net(x))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        fast(torch.randn(1, 3, 30, 32))


def test_auto_mode_picks_eager_on_cpu():
    """On CPU the packed eager net measured faster than inductor's frozen graph (README "Speed")."""
    _, _, _, net = small()
    fast = zoo.optimize(net.train())
    assert not fast.compiled and not net.training
    x = torch.randn(1, 3, 32, 32)
    out = fast(x)
    assert not out.requires_grad
    with torch.no_grad():
        assert torch.equal(out, net(x))


def test_bad_arguments():
    _, _, _, net = small()
    with pytest.raises(ValueError, match="unknown method 'logits'.*embedding"):
        zoo.optimize(net, method="logits")
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        zoo.optimize(net, mode="fast")
    with pytest.raises(TypeError, match="PEViT"):
        zoo.optimize(torch.nn.Linear(2, 2))


def test_packed_eager_weights_follow_weight_changes():
    """The eager net's cached oneDNN weights are rebuilt when new weights are loaded."""
    entry, cfg, _, net = small(seed=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net.embedding(x)  # builds the packed copies from the first weights
        other = meta_vision_state_dict(cfg, seed=2)
        net.load_state_dict(meta_to_zoo(other, cfg))
        out = net.embedding(x)
    ref = timm_outputs(timm_model(entry, cfg, other, 64, 64), x)["embedding"]
    assert (out - ref).abs().max() <= 1e-5


class OptimizeCalls:
    """Records each ``zoo.optimize`` call (every call builds its ``OptimizedNet`` through the module's global,
    however the caller imported ``optimize``); the real class does the work."""

    def __init__(self, monkeypatch):
        self.calls = []
        calls, real = self.calls, OPTIMIZE.OptimizedNet

        class Recorded(real):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                calls.append(self.method)

        monkeypatch.setattr(OPTIMIZE, "OptimizedNet", Recorded)

    def take(self):
        taken, self.calls[:] = list(self.calls), []
        return taken


def test_loader_optimize(hub, tmp_path, monkeypatch):
    src = tmp_path / "src.pt"
    write_meta_checkpoint(CORE, src)
    convert_checkpoint(CORE, src, weights_dir())
    calls = OptimizeCalls(monkeypatch)
    net, _ = zoo.load_pretrained_model(CORE.name, inference=True, new_size=64)
    assert calls.take() == [] and isinstance(net, zoo.PEViT)
    fast, info = zoo.load_pretrained_model(CORE.name, inference=True, new_size=64, optimize=True)
    assert calls.take() == ["forward"]
    assert isinstance(fast, OptimizedNet) and fast.net is not net and info.size == (64, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (fast(x) - net(x)).abs().max() <= 1e-6


def test_cli_embed_optimizes_only_when_asked(hub, tmp_path, monkeypatch):
    """`embed --optimize` goes through zoo.optimize, `--no-optimize` does not; by default only from
    OPTIMIZE_MIN_IMAGES images on. Outputs agree either way."""
    src = tmp_path / "src.pt"
    write_meta_checkpoint(CORE, src)
    convert_checkpoint(CORE, src, weights_dir())
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)
    calls = OptimizeCalls(monkeypatch)
    saved = {}
    for flags, expected in ((["--optimize"], ["embedding"]), (["--no-optimize"], []), ([], [])):
        out_dir = tmp_path / ("-".join(flags) or "default")
        assert main(["embed", CORE.name, str(image), "--size", "64", *flags, "--store-dtype", "float32", "--out", str(out_dir)]) == 0
        assert calls.take() == expected, flags
        saved[tuple(flags)] = np.asarray(zoo.read_embeddings(out_dir)[1])
    assert saved[("--optimize",)].shape == (1, 192)
    assert np.allclose(saved[("--optimize",)], saved[("--no-optimize",)], atol=1e-6)
    assert np.array_equal(saved[()], saved[("--no-optimize",)])
    many = []  # distinct files: the same path given twice is one image of the collection
    for i in range(importlib.import_module(EMBED_CLI).OPTIMIZE_MIN_IMAGES):
        many.append(str(tmp_path / f"many{i}.png"))
        Image.open(image).save(many[-1])
    for flags, expected in (([], ["embedding"]), (["--no-optimize"], [])):
        assert main(["embed", CORE.name, *many, "--size", "64", *flags, "--out", str(tmp_path / f"many{len(flags)}")]) == 0
        assert calls.take() == expected, flags
