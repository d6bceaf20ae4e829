"""The converters: Meta's checkpoints -> zoo safetensors, proven against timm, strict, atomic, offline-capable."""

import ast
import dataclasses
import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from tests.oracle import timm_model, timm_outputs, unit_config
from zoo.weights import ConversionError, convert_checkpoint, download_source, load_source, meta_to_zoo, read_metadata
from zoo.registry import find_entry, get_entry, load_registry
from zoo.weights.writer import TensorSpec, write_safetensors
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict

TOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]
T16 = find_entry("core", "T16")


def small_text(entry):
    """The entry's text tower cut down: the converter only checks a CLIP file's text keys by name."""
    return dataclasses.replace(entry.text, depth=2, vocab_size=64, context_length=8, width=64, mlp_dim=128)


def meta_file(path, entry, cfg=None, seed=0, dtype=torch.float32, clip=None):
    """Save a synthetic Meta checkpoint (a CLIP file for Core unless clip=False) and return (path, vision dict)."""
    cfg = cfg or entry.config
    if clip if clip is not None else entry.family == "core":
        state = meta_clip_state_dict(cfg, small_text(entry), seed=seed, dtype=dtype)
        vision = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    else:
        state = vision = meta_vision_state_dict(cfg, seed=seed, dtype=dtype)
    torch.save(state, path)
    return Path(path), vision


def cli(family, args):
    """The converter CLI; Core runs get --vision-only, since these CLIP files carry a cut-down text tower
    (the text file is tested in tests/test_clip_load.py)."""
    extra = ["--vision-only"] if family == "core" else []
    return importlib.import_module(f"converters.pe_{family}").main(args + extra)


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


# ---- round trip: Meta file -> converter -> zoo file -> net == timm ----

@pytest.mark.parametrize("name", zoo.list_pretrained_models())
def test_round_trip_matches_timm(name, tmp_path, capsys):
    entry = get_entry(name)
    cfg = unit_config(entry)
    reduced = cfg.depth != entry.config.depth
    src, vision = meta_file(tmp_path / "meta.pt", entry, cfg, seed=5)
    if reduced:  # B/L/G at unit depth: no CLI variant has that architecture, so call the library directly
        result = convert_checkpoint(dataclasses.replace(entry, config=cfg), src, tmp_path / "out")
        out = result.path
    else:
        assert cli(entry.family, ["--variant", entry.variant, "--checkpoint", str(src), "--out", str(tmp_path / "out")]) == 0
        out = tmp_path / "out" / entry.weights.file
        assert f"wrote {out}" in capsys.readouterr().out
    with torch.device("meta"):
        net = zoo.PEViT(cfg).eval()
    net.load_state_dict(load_file(out), strict=True, assign=True)
    # Half the native grid keeps the test fast and every weight in play: halving bilinearly (align_corners=False)
    # averages each pair of position rows, so each stored row reaches the output.
    assert cfg.grid % 2 == 0
    side = cfg.grid // 2 * cfg.patch_size
    x = torch.randn(1, 3, side, side)
    ref = timm_outputs(timm_model(entry, cfg, vision, side, side), x)
    assert ref["tokens"].abs().mean() > 0.1
    with torch.no_grad():
        assert (net.forward_features(x) - ref["tokens"]).abs().max() <= TOL
        emb = net.embedding(x)
        assert (emb - ref["embedding"]).abs().max() <= TOL
        if cfg.clip_dim:
            assert (net.clip_proj(emb) - ref["clip"]).abs().max() <= TOL


# ---- accepted inputs ----

FORMS = {  # name: (wrap the CLIP or the vision-only dict, how), True where the text tower is inside
    "clip": (True, lambda sd: sd),
    "vision-only": (False, lambda sd: sd),
    "state_dict": (True, lambda sd: {"state_dict": sd, "epoch": torch.tensor(3)}),
    "weights": (False, lambda sd: {"weights": sd}),
    "module-prefix": (True, lambda sd: {f"module.{k}": v for k, v in sd.items()}),
    "nested-module": (False, lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),
    "safetensors-clip": (True, None),
    "safetensors-vision": (False, None),
}


@pytest.mark.parametrize("form", FORMS)
def test_accepted_inputs(form, tmp_path):
    cfg = T16.config
    clip = meta_clip_state_dict(cfg, small_text(T16), seed=1)
    vision = {k.removeprefix("visual."): v for k, v in clip.items() if k.startswith("visual.")}
    with_text, wrap = FORMS[form]
    state = clip if with_text else vision
    if wrap is None:
        src = tmp_path / "meta.safetensors"
        save_file(state, src)
    else:
        src = tmp_path / "meta.pt"
        torch.save(wrap(state), src)
    result = convert_checkpoint(T16, src, tmp_path / "out")
    got, want = load_file(result.path), meta_to_zoo(vision, cfg)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(result.dropped) == (sorted(k for k in clip if not k.startswith("visual.")) if with_text else [])


def test_clip_text_tower_dropped_in_one_summary_line(tmp_path, capsys):
    src, _ = meta_file(tmp_path / "meta.pt", T16)
    assert cli("core", ["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("dropped")]
    assert len(lines) == 1
    for part in ("token_embedding.weight", "transformer.resblocks.{0..1}.*", "ln_final.weight", "text_projection", "logit_scale"):
        assert part in lines[0]


class Payload:
    """A pickled object that is not a tensor: weights-only loading must refuse it."""


def test_load_source_is_memory_mapped_and_safe(tmp_path):
    src, _ = meta_file(tmp_path / "meta.pt", T16, clip=False)
    state = load_source(src)
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(src))]
    ranges = [tuple(int(a, 16) for a in m[0].split("-")) for m in maps]
    for tensor in state.values():  # every tensor lies in a mapping of the file: nothing was copied
        assert any(lo <= tensor.data_ptr() < hi for lo, hi in ranges)

    torch.save({"conv1.weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="pickled objects other than tensors"):
        load_source(tmp_path / "evil.pt")


# ---- strictness: each failure names the problem, and nothing is written ----

def _convert_fails(tmp_path, capsys, family, variant, state, *expected):
    torch.save(state, tmp_path / "meta.pt")
    out = tmp_path / "out"
    assert cli(family, ["--variant", variant, "--checkpoint", str(tmp_path / "meta.pt"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert files_in(out) == []  # no output, no temporary file
    return err


def test_wrong_variant_names_the_variant_it_looks_like(tmp_path, capsys):
    s16 = meta_vision_state_dict(find_entry("core", "S16").config)
    _convert_fails(tmp_path, capsys, "core", "T16", s16, "looks like S16 (rope_i_vit_s16_pn_aps_c1_pe-core)", "--variant S16")


def test_other_family_names_its_converter(tmp_path, capsys):
    spatial = meta_vision_state_dict(find_entry("spatial", "T16").config)
    _convert_fails(tmp_path, capsys, "core", "T16", spatial,
                   "looks like T16 (rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial)", "python -m converters.pe_spatial --variant T16")


def test_missing_key(tmp_path, capsys):
    state = meta_clip_state_dict(T16.config, small_text(T16))
    del state["visual.transformer.resblocks.3.mlp.c_fc.bias"]
    _convert_fails(tmp_path, capsys, "core", "T16", state, "missing tensor(s) for ['blocks.3.mlp.fc1.bias']")


@pytest.mark.parametrize("key", ["visual.transformer.resblocks.0.attn.rel_bias", "decoder.weight"])
def test_extra_unknown_key(tmp_path, capsys, key):
    state = meta_clip_state_dict(T16.config, small_text(T16))
    state[key] = torch.zeros(4)
    _convert_fails(tmp_path, capsys, "core", "T16", state, key.removeprefix("visual."))


def test_shape_mismatch(tmp_path, capsys):
    state = meta_vision_state_dict(T16.config)
    state["ln_pre.weight"] = torch.ones(100)
    _convert_fails(tmp_path, capsys, "core", "T16", state, "ln_pre.weight -> norm_pre.weight: (100,) != expected (192,)")


@pytest.mark.parametrize("kind", ["truncated-pt", "truncated-safetensors", "garbage", "empty"])
def test_unreadable_source(tmp_path, capsys, kind):
    vision = meta_vision_state_dict(T16.config)
    src = tmp_path / ("meta.safetensors" if "safetensors" in kind else "meta.pt")
    if kind == "truncated-pt":
        torch.save(vision, src)
    elif kind == "truncated-safetensors":
        save_file(vision, src)
    data = src.read_bytes() if src.exists() else b""
    src.write_bytes({"garbage": os.urandom(4096), "empty": b""}.get(kind, data[: len(data) // 2]))
    with pytest.raises(ConversionError, match="truncated, corrupt or not a PyTorch/safetensors checkpoint"):
        load_source(src)
    assert cli("core", ["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "error: cannot read" in err and "Traceback" not in err
    assert files_in(tmp_path / "out") == []


def test_missing_source_file(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        load_source(tmp_path / "nope.pt")


def test_existing_output_kept_unless_force(tmp_path, capsys):
    src, _ = meta_file(tmp_path / "a.pt", T16, seed=1)
    other, _ = meta_file(tmp_path / "b.pt", T16, seed=2)
    args = ["--variant", "T16", "--out", str(tmp_path / "out")]
    assert cli("core", args + ["--checkpoint", str(src)]) == 0
    out = tmp_path / "out" / T16.weights.file
    before = out.read_bytes()
    capsys.readouterr()
    assert cli("core", args + ["--checkpoint", str(other)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    with pytest.raises(FileExistsError, match="force=True"):
        convert_checkpoint(T16, other, tmp_path / "out")
    assert cli("core", args + ["--checkpoint", str(other), "--force"]) == 0
    assert out.read_bytes() != before
    # the output and its sha256 record (which the loader verifies against); no temp file left
    assert files_in(tmp_path / "out") == sorted([T16.weights.file, T16.weights.file + ".sha256.json"])


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"previous")

    def interrupted():
        raise KeyboardInterrupt

    specs = [TensorSpec("a", (4, 4), torch.float32, lambda: torch.ones(4, 4)), TensorSpec("b", (2,), torch.float32, interrupted)]
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(target, specs, {})
    assert files_in(tmp_path) == ["w.safetensors"] and target.read_bytes() == b"previous"
    specs[1] = TensorSpec("b", (2,), torch.float32, lambda: torch.ones(3))  # a producer that breaks its promise
    with pytest.raises(RuntimeError, match="announced"):
        write_safetensors(target, specs, {})
    assert files_in(tmp_path) == ["w.safetensors"] and target.read_bytes() == b"previous"


def test_writer_output_is_standard_safetensors(tmp_path):
    tensors = {"f64": torch.randn(3, dtype=torch.float64), "bf16": torch.randn(5, 3).to(torch.bfloat16),
               "i8": torch.arange(7, dtype=torch.int8), "f32": torch.randn(2, 3, 4), "scalar": torch.tensor(1.5)}
    specs = [TensorSpec(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
    size, sha = write_safetensors(tmp_path / "x.safetensors", specs, {"k": "v"})
    data = (tmp_path / "x.safetensors").read_bytes()
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    assert int.from_bytes(data[:8], "little") % 8 == 0
    got = load_file(tmp_path / "x.safetensors")
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert read_metadata(tmp_path / "x.safetensors") == {"k": "v"}


# ---- output: metadata, dtype ----

def test_metadata_and_reported_hash(tmp_path, capsys):
    src, _ = meta_file(tmp_path / "meta.pt", T16)
    assert cli("core", ["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / T16.weights.file
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    printed = capsys.readouterr().out
    assert f"sha256 {sha}" in printed and f"size {out.stat().st_size} bytes" in printed
    meta = read_metadata(out)
    assert meta == {
        "format": "pe-zoo", "name": T16.name, "family": "core", "variant": "T16",
        "config": meta["config"], "signature": meta["signature"], "rgb_stats": meta["rgb_stats"],
        "source_repo": "facebook/PE-Core-T16-384", "source_file": "PE-Core-T16-384.pt",
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "converter_version": "1", "dtype": "float32",
    }
    assert zoo.PEConfig.from_dict(json.loads(meta["config"])) == T16.config
    assert json.loads(meta["signature"]) == T16.signature and json.loads(meta["rgb_stats"]) == T16.rgb_stats


@pytest.mark.parametrize("source_dtype, option, want", [
    (torch.float32, "bfloat16", torch.bfloat16), (torch.float32, "float16", torch.float16),
    (torch.bfloat16, None, torch.bfloat16), (torch.bfloat16, "float32", torch.float32),
])
def test_dtype_option(tmp_path, source_dtype, option, want):
    src, vision = meta_file(tmp_path / "meta.pt", T16, dtype=source_dtype)
    args = ["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path)] + (["--dtype", option] if option else [])
    assert cli("core", args) == 0
    got, ref = load_file(tmp_path / T16.weights.file), meta_to_zoo(vision, T16.config)
    assert all(t.dtype == want for t in got.values())
    assert all(torch.equal(got[k], ref[k].to(want)) for k in ref)
    assert read_metadata(tmp_path / T16.weights.file)["dtype"] == str(want).removeprefix("torch.")


def option_help(text):
    """{option: its help text} from the "options:" section of argparse's --help output (whitespace collapsed)."""
    helps, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            spec, _, rest = line.strip().partition("  ")
            current = [o for o in spec.replace(",", " ").split() if o.startswith("--")][0]
            helps[current] = rest.strip()
        elif current and line.strip():
            helps[current] = f"{helps[current]} {line.strip()}".strip()
    return helps


@pytest.mark.parametrize("family", ["core", "spatial", "lang"])
def test_help_explains_each_option(family, tmp_path, monkeypatch, capsys):
    """Each option's own help line says what it does and its default (argparse's usage line alone names them all)."""
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside the weights path
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"converters.pe_{family}").main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"Convert Meta's PE-{family.capitalize()} checkpoint" in text and "strict" in text
    helps = option_help(text)
    variants = sorted({e.variant.split("-")[0] for e in load_registry().values() if e.family == family})
    expected = {
        "--help": "show this help message",
        "--variant": "which model size to convert",
        "--checkpoint": "a local Meta checkpoint (.pt or .safetensors) instead of downloading it from the Hugging Face Hub",
        "--out": f"folder to write <name>.safetensors into (default: the zoo's weights folder, now {tmp_path / 'home' / 'weights'})",
        "--dtype": "store the weights in this dtype (default: the checkpoint's dominant float dtype",
        "--force": "overwrite an existing output file",
    }
    if family == "core":
        expected["--vision-only"] = "skip the CLIP text tower (by default it is written to <name>_text.safetensors"
        expected["--text-only"] = "write only the CLIP text tower, <name>_text.safetensors"
    if family == "lang":
        expected["--tiling"] = "the -Tiling checkpoint of the variant"
    assert sorted(helps) == sorted(expected)
    for option, phrase in expected.items():
        assert phrase in helps[option], option
    assert "HF_HUB_OFFLINE and HF_TOKEN" in helps["--checkpoint"]
    assert f"--variant {{{','.join(variants)}}}" in text.split("options:", 1)[1]
    assert "{float32,bfloat16,float16}" in text.split("options:", 1)[1]


# ---- the Hub: a real Hugging Face cache, offline ----

def _hub_cache(hub: Path, entry, src: Path) -> str:
    """Lay out ``src`` as huggingface_hub caches a download of entry.source; returns the blob's sha256."""
    repo = hub / f"models--{entry.source.repo.replace('/', '--')}"
    sha, commit = hashlib.sha256(src.read_bytes()).hexdigest(), "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    src.rename(repo / "blobs" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / entry.source.file).symlink_to(Path("../..") / "blobs" / sha)
    return sha


def test_offline_run_through_hub_cache(tmp_path):
    src, _ = meta_file(tmp_path / "meta.pt", T16)
    sha = _hub_cache(tmp_path / "hf" / "hub", T16, src)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    run = subprocess.run([sys.executable, "-m", "converters.pe_core", "--variant", "T16", "--out", str(tmp_path / "out"), "--vision-only"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out" / T16.weights.file
    assert f"wrote {out}" in run.stdout
    assert read_metadata(out)["source_sha256"] == sha
    assert load_file(out).keys() == zoo.PEViT(T16.config).state_dict().keys()


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConversionError, match="--checkpoint PATH"):
        download_source(T16, progress=False)
    assert cli("core", ["--variant", "T16", "--out", str(tmp_path / "out")]) == 1
    assert "PE-Core-T16-384.pt of facebook/PE-Core-T16-384" in capsys.readouterr().err
    assert files_in(tmp_path / "out") == []


def test_zoo_never_imports_converters():
    for path in (REPO_ROOT / "zoo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "converters" for n in names), path
