"""python -m zoo: list, info, embed, features, demo, --help everywhere, one-line errors (collections: test_collection)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.weights_env import CORE, hub, write_meta_checkpoint  # noqa: F401 (fixture)
from zoo.__main__ import main
from zoo.weights import convert_checkpoint
from zoo.inference import infer_batch
from zoo.paths import weights_dir

COMMANDS = ["list", "info", "embed", "search", "features", "demo"]


@pytest.fixture
def ready(hub, tmp_path):
    """T16 Core weights in the weights folder and two images."""
    src = tmp_path / "src.pt"
    write_meta_checkpoint(CORE, src)
    convert_checkpoint(CORE, src, weights_dir())
    rng = np.random.default_rng(0)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(paths[1])
    return [str(p) for p in paths]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.mark.parametrize("cmd", [None, *COMMANDS])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"] if cmd else ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m zoo") and (cmd is None or cmd in out.splitlines()[0])


def test_list(capsys):
    assert main(["list", "*pe-spatial"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all("pe-spatial" in line.split()[0] for line in lines)


def test_info(hub, capsys):
    assert main(["info", CORE.name]) == 0
    out = capsys.readouterr().out
    for part in ('"width": 192', "parameters 6,042,240 (vision tower) + 98,304", "input size 384x384",
                 str(weights_dir() / CORE.weights.file), "absent", "facebook/PE-Core-T16-384/PE-Core-T16-384.pt"):
        assert part in out
    assert main(["info", "rope_i_vit_t16"]) == 1
    assert "closest names: rope_i_vit_t16_pn_aps_c1_pe-core" in one_line_error(capsys)


def test_info_present(ready, capsys):
    assert main(["info", CORE.name]) == 0
    assert f"{weights_dir() / CORE.weights.file}: present" in capsys.readouterr().out


def test_embed(ready, tmp_path, capsys):
    out_dir = tmp_path / "emb"
    assert main(["embed", CORE.name, *ready, "--size", "192", "--store-dtype", "float32", "--out", str(out_dir)]) == 0
    assert f"{out_dir}: 2 embeddings in 1 shards, 0 unreadable images" in capsys.readouterr().out
    paths, saved = zoo.read_embeddings(out_dir)
    net, info = zoo.load_pretrained_model(CORE.name, inference=True, new_size=192)
    expected = infer_batch(net, ready, zoo.classification_transform(info.size, info.rgb_stats))
    assert paths == ready and saved.shape == (2, 192) and np.allclose(np.asarray(saved), expected, atol=1e-5)
    assert main(["embed", CORE.name, ready[0], "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    _, saved = zoo.read_embeddings(tmp_path / "bf16")
    assert saved.shape == (1, 192) and np.isfinite(np.asarray(saved)).all()


def test_features(ready, tmp_path, capsys):
    assert main(["features", CORE.name, ready[0], "--size", "256"]) == 0
    assert capsys.readouterr().out.strip() == "neck: (1, 192, 16, 16)"
    out_file = tmp_path / "f.npz"
    assert main(["features", CORE.name, ready[0], "--layers", "3", "-1", "--out", str(out_file)]) == 0
    assert "block3: (1, 192, 24, 24)\nblock11: (1, 192, 24, 24)" in capsys.readouterr().out
    saved = np.load(out_file)
    net, info = zoo.load_pretrained_model(CORE.name, inference=True)
    x = zoo.classification_transform(info.size, info.rgb_stats)(Image.open(ready[0])).unsqueeze(0)
    with torch.no_grad():
        ref = net.detection_features(x, layers=[3])["block3"].numpy()
    assert sorted(saved) == ["block11", "block3"] and np.allclose(saved["block3"], ref, atol=1e-5)


def test_errors_are_one_line(hub, ready, tmp_path, capsys):
    assert main(["embed", CORE.name, str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 1
    assert "no such file or folder" in one_line_error(capsys)
    assert main(["features", CORE.name, ready[0], "--layers", "40"]) == 1
    assert "out of range" in one_line_error(capsys)
    assert main(["embed", CORE.name, ready[0], "--size", "100", "--out", str(tmp_path / "o")]) == 1
    assert "patch size 16" in one_line_error(capsys)
    assert main(["embed", "rope_i_vit_s16_pn_aps_c1_pe-core", ready[0], "--out", str(tmp_path / "o")]) == 1  # no weights, offline
    assert "python -m converters.pe_core --variant S16" in one_line_error(capsys)


def test_demo(capsys, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", "/nonexistent-zoo-home")  # the demo never touches the real weights folder
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for part in ("RANDOM weights", "1. built a Meta-layout CLIP checkpoint", "2. resolve", "3. convert", "5. embed",
                 "embedding (1, 192)", "6. detection features: [('neck', (1, 192, 24, 24))]",
                 'zoo.load_pretrained_model("rope_i_vit_t16_pn_aps_c1_pe-core", inference=True)'):
        assert part in out
    assert not os.path.exists("/nonexistent-zoo-home")


def test_module_entry_point():
    run = subprocess.run([sys.executable, "-m", "zoo", "info", "nope"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.startswith("error: unknown model 'nope'") and run.stderr.count("\n") == 1


@pytest.mark.parametrize("where", ["before", "after", "absent"])
def test_quiet_before_or_after_the_command(where, hub, capsys):
    import logging

    argv = {"before": ["--quiet", "info", CORE.name], "after": ["info", CORE.name, "--quiet"], "absent": ["info", CORE.name]}[where]
    assert main(argv) == 0
    assert CORE.name in capsys.readouterr().out
    assert logging.getLogger("zoo").level == (logging.INFO if where == "absent" else logging.WARNING)


@pytest.mark.parametrize("cmd", ["list", "info", "features", "classify", "demo"])
def test_help_has_a_description_and_examples(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    out = capsys.readouterr().out
    usage, description = out.split("\n\n")[:2]
    assert not description.lstrip().startswith(("positional arguments", "options")), f"`{cmd}` has no description"
    examples = out.split("\nexamples:\n")[1].splitlines()
    assert 2 <= len(examples) <= 3 and all(line.startswith(f"  python -m zoo {cmd}") for line in examples)


def test_workers_default_is_the_core_count_at_most_8():
    import argparse

    from zoo.cli.common import add_workers

    p = argparse.ArgumentParser()
    add_workers(p)
    assert p.parse_args([]).workers == min(8, os.cpu_count() or 1) and p.parse_args(["--workers", "0"]).workers == 0
