"""zoo.export: ONNX Runtime and torch.export programs equal the eager net (and timm), dynamic sizes,
standard operators only, ONNX Runtime's errors on bad input, atomic files, the CLI and its extra."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from tests.oracle import timm_model, timm_outputs
from tests.weights_env import CORE, SMALL_TEXT, SPATIAL, hub, write_meta_checkpoint  # noqa: F401 (fixture)
from zoo.__main__ import main
from zoo.export import ExportError, to_onnx, to_pt2
from zoo.nets.pe_vit import Linear
from zoo.nets.text import PEText
from zoo.paths import weights_dir
from zoo.testing.synthetic import meta_vision_state_dict
from zoo.weights import convert_checkpoint, meta_to_zoo

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ATOL = 1e-4
NATIVE = 384  # Core T16's native size (Spatial T16: 512)
ODD = (256, 416)  # non-square, not traced at
METHODS = {
    "core": ["embedding", "clip_embedding", "forward_features", "detection_features", "forward"],
    "spatial": ["embedding", "forward_features", "detection_features"],
}


def small_net(entry, depth=1, seed=3):
    """The entry's T16 tower cut to ``depth`` blocks with Meta-layout random weights (and the Meta dict)."""
    cfg = dataclasses.replace(entry.config, depth=depth)
    meta = meta_vision_state_dict(cfg, seed=seed)
    net = zoo.PEViT(cfg)
    net.load_state_dict(meta_to_zoo(meta, cfg))
    return net.eval().requires_grad_(False), meta


@pytest.fixture(scope="module")
def nets():
    core, core_meta = small_net(CORE)
    core_head, _ = small_net(CORE, seed=4)
    core_head.reset_classifier(5)
    torch.nn.init.normal_(core_head.head.weight)
    spatial, spatial_meta = small_net(SPATIAL)
    return {"core": (core, core_meta), "core+head": (core_head, None), "spatial": (spatial, spatial_meta)}


def eager(net, method, x):
    with torch.no_grad():
        out = getattr(net, method)(x)
    return [v.numpy() for v in out.values()] if isinstance(out, dict) else [out.numpy()]


def image(batch, h, w, seed):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def ort_run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})


def pt2_run(path, x):
    with torch.no_grad():
        return [v.numpy() for v in torch.export.load(str(path)).module()(x)]


def assert_close(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL)


def onnx_domains(path):
    model = onnx.load(str(path))
    return {n.domain for n in model.graph.node}, {n.op_type for n in model.graph.node}, len(model.functions)


def pt2_namespaces(path):
    graph = torch.export.load(str(path)).graph
    return {t.namespace for n in graph.nodes if n.op == "call_function" and isinstance(t := n.target, torch._ops.OpOverload)}


FAST = {("core", "embedding"), ("spatial", "detection_features")}  # the other methods are opt-in (-m slow): ~4 s CPU each
CASES = [
    pytest.param(family, method, marks=() if (family, method) in FAST else pytest.mark.slow)
    for family, methods in METHODS.items() for method in methods
]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("family,method", CASES)
def test_export_equals_eager_native_batch3_and_unseen_nonsquare_size(nets, tmp_path, fmt, family, method):
    net, _ = nets["core+head" if method == "forward" else family]
    path = tmp_path / f"m.{fmt}"
    (to_onnx if fmt == "onnx" else to_pt2)(net, path, method=method, dynamic="batch,size")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left
    run = ort_run if fmt == "onnx" else pt2_run
    native = net.cfg.image_size
    for x in (image(3, native, native, 0), image(2, *ODD, 1)):
        assert_close(run(path, x), eager(net, method, x))
    # standard operators only: the eager net's oneDNN-packed linear never reaches the graph
    if fmt == "onnx":
        domains, ops, functions = onnx_domains(path)
        assert domains <= {"", "ai.onnx"} and functions == 0
        assert "Gemm" in ops or "MatMul" in ops
    else:
        assert pt2_namespaces(path) == {"aten"}


@pytest.mark.parametrize("family", ["core", pytest.param("spatial", marks=pytest.mark.slow)])
def test_onnx_at_unseen_size_matches_timm(nets, tmp_path, family):
    """The in-graph position-embedding resampling and RoPE tables agree with timm (independent) at a new size."""
    net, meta = nets[family]
    entry = CORE if family == "core" else SPATIAL
    path = to_onnx(net, tmp_path / "m.onnx", method="forward_features", dynamic="batch,size")
    x = image(2, *ODD, 5)
    ref = timm_outputs(timm_model(entry, net.cfg, meta, *ODD), x)["tokens"].numpy()
    np.testing.assert_allclose(ort_run(path, x)[0], ref, rtol=0, atol=ATOL)


def test_detection_layers_are_named_outputs(tmp_path):
    net, _ = small_net(CORE, depth=3)
    path = to_onnx(net, tmp_path / "m.onnx", method="detection_features", layers=[0, -1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["block0", "block2"]
    x = image(3, NATIVE, NATIVE, 0)
    with torch.no_grad():
        expected = [v.numpy() for v in net.detection_features(x, layers=[0, -1]).values()]
    assert_close(session.run(None, {"image": x.numpy()}), expected)


def test_static_size_bad_inputs_get_onnxruntime_errors(nets, tmp_path):
    net, _ = nets["core"]
    path = to_onnx(net, tmp_path / "m.onnx")  # dynamic batch only
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_inputs()[0].shape[1:] == [3, NATIVE, NATIVE]
    ok = image(1, NATIVE, NATIVE, 0)
    assert_close(session.run(None, {"image": ok.numpy()}), eager(net, "embedding", ok))
    for bad in (image(1, 320, 320, 0).numpy(), np.zeros((1, 2, NATIVE, NATIVE), np.float32),
                np.zeros((3, NATIVE, NATIVE), np.float32), ok.numpy().astype(np.float64)):
        with pytest.raises(Exception) as e:
            session.run(None, {"image": bad})
        assert type(e.value).__module__.startswith("onnxruntime"), e.value
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(Exception) as e:
        ort.InferenceSession(str(corrupt), providers=["CPUExecutionProvider"])
    assert type(e.value).__module__.startswith("onnxruntime"), e.value


def test_dynamic_size_off_the_patch_grid(nets, tmp_path):
    """The .pt2 program refuses a side that is not a multiple of the patch size; the ONNX graph (which
    keeps no shape assertions) drops the partial patches, as the README says: the top-left crop."""
    net, _ = nets["spatial"]
    x = image(1, 100, 120, 0)
    path = to_onnx(net, tmp_path / "m.onnx", method="forward_features", dynamic="batch,size")
    assert_close(ort_run(path, x), eager(net, "forward_features", x[..., :96, :112]))
    path = to_pt2(net, tmp_path / "m.pt2", method="forward_features", dynamic="batch,size")
    with pytest.raises(Exception, match="16"):
        pt2_run(path, x)


def test_eager_net_unchanged_by_export(nets, tmp_path):
    net, _ = nets["core"]
    x = image(1, 320, 352, 0)
    before = eager(net, "embedding", x)
    to_pt2(net, tmp_path / "m.pt2", dynamic="batch,size")
    assert all(not isinstance(t, torch._subclasses.FakeTensor) for pair in net._rope_cache.values() for t in pair)
    np.testing.assert_array_equal(eager(net, "embedding", x)[0], before[0])
    assert not net.training
    linears = [m for m in net.modules() if isinstance(m, Linear)]
    assert linears and all(m.pack and "pack" not in vars(m) for m in linears)  # packing settings untouched
    # tracing leaves weak references on what it traced (a twin): none on the net's own parameters, which
    # would keep the eager net from packing its weights again (a 15-30% slower eager net after an export)
    assert not [name for name, p in net.named_parameters() if weakref.getweakrefs(p)]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_mismatch_fails_and_writes_nothing(tmp_path, fmt):
    """A stale RoPE table in the eager net's cache (the graph computes its own) must fail the self-check."""
    net, _ = small_net(CORE)
    cos, _ = net.rope_tables(NATIVE // 16, NATIVE // 16, torch.device("cpu"), torch.float32)
    cos.mul_(1.01)
    path = tmp_path / f"m.{fmt}"
    with pytest.raises(ExportError, match="differs from the eager net"):
        (to_onnx if fmt == "onnx" else to_pt2)(net, path)
    assert list(tmp_path.iterdir()) == []


def test_external_data_beside_the_model_loads_from_elsewhere(nets, tmp_path, monkeypatch):
    net, _ = nets["spatial"]
    path = to_onnx(net, tmp_path / "out" / "m.onnx", external_data=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert path.stat().st_size < 1e6 < (path.parent / "m.onnx.data").stat().st_size
    monkeypatch.chdir(tmp_path)
    x = image(2, 512, 512, 0)  # Spatial T16's native size
    assert_close(ort_run(path, x), eager(net, "embedding", x))


def test_text_tower(tmp_path):
    torch.manual_seed(0)
    text = PEText(SMALL_TEXT, out_dim=64).eval().requires_grad_(False)
    tokens = torch.randint(0, SMALL_TEXT.vocab_size, (4, SMALL_TEXT.context_length))
    with torch.no_grad():
        expected = text(tokens).numpy()
    onnx_path = to_onnx(text, tmp_path / "t.onnx")
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens.numpy()})
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=ATOL)
    pt2_path = to_pt2(text, tmp_path / "t.pt2")
    with torch.no_grad():
        np.testing.assert_allclose(torch.export.load(str(pt2_path)).module()(tokens)[0].numpy(), expected, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="text tower"):
        to_onnx(text, tmp_path / "x.onnx", dynamic="batch,size")


def test_bad_options_are_one_clear_error(nets, tmp_path):
    spatial, _ = nets["spatial"]
    with pytest.raises(ValueError, match="PE-Core models only"):
        to_pt2(spatial, tmp_path / "m.pt2", method="clip_embedding")
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        to_pt2(spatial, tmp_path / "m.pt2", size=(100, 128))
    with pytest.raises(ValueError, match="dynamic must be one of"):
        to_pt2(spatial, tmp_path / "m.pt2", dynamic="size")
    with pytest.raises(ValueError, match="no bfloat16"):
        to_onnx(small_net(SPATIAL)[0].to(torch.bfloat16), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ CLI
@pytest.fixture
def core_weights(hub, tmp_path):
    src = tmp_path / "src.pt"
    write_meta_checkpoint(CORE, src)
    convert_checkpoint(CORE, src, weights_dir())
    return zoo.load_pretrained_model(CORE.name, inference=True)[0]


def test_cli_onnx_small_size_force_and_stale_staging(hub, tmp_path, monkeypatch, capsys):
    """The CLI path (load by name, export, check, write) for T16 Core cut to one block, at 64 px. An existing
    --out is kept unless --force. A staging folder (the whole model) left by a killed export of the same file
    is removed, a running export's is not. (The full T16 at other sizes: test_cli_onnx_and_pt2, slow.)"""
    from tests.test_collection_hostile import dead_pid, small_core

    small_core(monkeypatch, tmp_path)
    core_weights = zoo.load_pretrained_model(CORE.name, inference=True)[0]
    assert core_weights.cfg.depth == 1
    out = tmp_path / "core.onnx"
    out.write_text("my notes")
    stale, live = tmp_path / f".core.onnx.{dead_pid()}.x1.tmp", tmp_path / f".core.onnx.{os.getpid()}.x2.tmp"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "core.onnx").write_bytes(b"weights")
    args = ["export", CORE.name, "--out", str(out), "--size", "64"]
    assert main(args) == 1
    assert "already exists; pass --force" in one_line_error(capsys) and out.read_text() == "my notes"
    for export in (to_onnx, to_pt2):  # the library refuses too, before tracing
        with pytest.raises(FileExistsError, match="already exists"):
            export(core_weights, out)
    assert main([*args, "--force"]) == 0
    assert "checked with ONNX Runtime" in capsys.readouterr().err
    x = image(2, 64, 64, 0)
    assert_close(ort_run(out, x), eager(core_weights, "embedding", x))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [live.name]


@pytest.mark.slow
def test_cli_onnx_and_pt2(core_weights, tmp_path, capsys):
    out = tmp_path / "core.onnx"
    assert main(["export", CORE.name, "--out", str(out), "--dynamic", "batch,size", "--size", "320"]) == 0
    assert "checked with ONNX Runtime" in capsys.readouterr().err
    x = image(2, *ODD, 0)
    assert_close(ort_run(out, x), eager(core_weights, "embedding", x))
    out = tmp_path / "core.pt2"
    assert main(["export", CORE.name, "--out", str(out), "--method", "clip_embedding"]) == 0
    x = image(3, NATIVE, NATIVE, 0)
    assert_close(pt2_run(out, x), eager(core_weights, "clip_embedding", x))


def test_opset_torch_cannot_write_is_refused(tmp_path):
    net, _ = small_net(CORE)
    with pytest.raises(ExportError, match="cannot write opset 13 .*it wrote opset 18"):
        to_onnx(net, tmp_path / "m.onnx", size=64, opset=13)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_text_tower(hub, tmp_path, capsys):
    """--text: the full-size T16 text tower (converted by the Core converter) as ONNX, equal to the eager tower."""
    from converters.pe_core import main as convert_core
    from zoo.testing.synthetic import meta_clip_state_dict

    src = tmp_path / "PE-Core-T16-384.pt"
    torch.save(meta_clip_state_dict(CORE.config, CORE.text, seed=11, dtype=torch.bfloat16), src)
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(weights_dir())]) == 0
    out = tmp_path / "text.onnx"
    assert main(["export", CORE.name, "--text", "--out", str(out)]) == 0
    text = zoo.load_pretrained_clip(CORE.name, inference=True, dtype=torch.float32).text
    tokens = zoo.get_tokenizer(CORE.name)(["a photo of a cat", "a diagram"], context_length=text.context_length)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, text(tokens).numpy(), rtol=0, atol=ATOL)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    return err


def test_cli_without_the_onnx_extra(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    out = tmp_path / "out"
    assert main(["export", CORE.name, "--out", str(out / "m.onnx")]) == 1
    assert "pip install 'pe-zoo[onnx]'" in one_line_error(capsys)
    assert not out.exists()


def test_cli_help_examples_and_size(capsys):
    helps = {}
    for command in ("export", "embed", "search"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = capsys.readouterr().out
        assert f"examples:\n  python -m zoo {command} " in helps[command]
    assert "--dynamic AXES" in helps["export"] and "{batch,batch,size}" not in helps["export"]
    with pytest.raises(SystemExit):  # --size is one number, as in the other commands
        main(["export", CORE.name, "--out", "m.onnx", "--size", "320", "352"])
    assert "unrecognized arguments: 352" in capsys.readouterr().err


def test_cli_bad_options(tmp_path, capsys):
    assert main(["export", CORE.name, "--out", str(tmp_path / "m.bin")]) == 1
    assert "--format onnx" in one_line_error(capsys)
    assert main(["export", CORE.name, "--out", str(tmp_path / "m.pt2"), "--text", "--method", "embedding"]) == 1
    assert "--text exports the text tower" in one_line_error(capsys)


def test_import_zoo_loads_no_onnx_module():
    code = "import sys, zoo, zoo.export, zoo.cli; print(sorted({'onnx', 'onnxruntime', 'onnxscript', 'onnx_ir'} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.slow
def test_g14_onnx_has_external_data_and_loads(tmp_path):
    """G14's 7.5 GB of float32 weights exceed ONNX's 2 GB protobuf limit: external data beside the file."""
    entry = zoo.registry.get_entry("rope_i_vit_g14_pn_ap_c1_pe-core")
    net = zoo.PEViT(entry.config).eval().requires_grad_(False)
    path = to_onnx(net, tmp_path / "g14.onnx")
    data = tmp_path / "g14.onnx.data"
    assert data.stat().st_size > 2 * 1024**3 > path.stat().st_size
    x = image(1, 448, 448, 0)
    got = ort_run(path, x)[0]
    np.testing.assert_allclose(got, eager(net, "embedding", x)[0], rtol=0, atol=ATOL * max(1, float(np.abs(got).max())))
