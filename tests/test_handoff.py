"""Hand-offs: zoo nets as timm's and open_clip's own PE models and back (equal outputs), birder's scripts on
zoo nets (python -m zoo.birder), birder checkpoints loaded back by path, and PE-Lang's -Tiling checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.weights_env import CORE, SPATIAL, add_meta_source, hub  # noqa: F401 (fixture)
from zoo.registry import find_entry, get_entry
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict
from zoo.weights import meta_to_zoo

timm = pytest.importorskip("timm")
TOL = 1e-5
LANG = "rope_i_vit_reg1_l14_pn_npn_avg_ls_c1_pe-lang"
CASES = [  # (name, depth, input side, classifier classes)
    (CORE.name, 4, 64, 0), (CORE.name, 2, 48, 5), (SPATIAL.name, 3, 80, 0), (LANG, 2, 56, 0),
    ("rope_i_vit_g14_pn_npn_avg_ls_c1_pe-lang-tiling", 1, 28, 3),
]


@functools.cache
def zoo_net(name: str, depth: int, side: int, classes: int) -> zoo.PEViT:
    cfg = dataclasses.replace(get_entry(name).config, depth=depth)
    net = zoo.PEViT(cfg).eval()
    net.load_state_dict(meta_to_zoo(meta_vision_state_dict(cfg, seed=9), cfg), strict=False)
    if classes:
        net.reset_classifier(classes)
        torch.nn.init.normal_(net.head.weight, std=0.5)
    net.pretrained_cfg = {"input_size": (3, side, side), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return net


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].rsplit('_', 1)[1]}-d{c[1]}-{c[2]}px-{c[3]}cls")
def test_to_timm_and_back_give_equal_outputs(case):
    net = zoo_net(*case)
    side = case[2]
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    model = zoo.to_timm(net)
    assert type(model).__module__ == "timm.models.eva"  # timm's own class, not a wrapper
    with torch.no_grad():
        tokens = net.forward_features(x)
        assert tokens.abs().mean() > 0.1
        assert (model.forward_features(x) - tokens).abs().max() <= TOL
        want = net(x) if net.num_classes else (net.clip_embedding(x) if net.clip_proj is not None else net.embedding(x))
        assert (model(x) - want).abs().max() <= TOL
        back = zoo.from_timm(model)
        assert (back.forward_features(x) - tokens).abs().max() <= TOL
        assert (back(x) - net(x)).abs().max() <= TOL
    assert back.num_classes == net.num_classes and back.cfg.depth == net.cfg.depth
    assert tuple(back.pretrained_cfg["input_size"]) == (3, side, side)


def test_timm_data_config_is_the_zoo_transform():
    net = zoo_net(CORE.name, 4, 64, 0)
    model = zoo.to_timm(net)
    data = timm.data.resolve_data_config({}, model=model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    ours = zoo.classification_transform((64, 64), {"mean": [0.5] * 3, "std": [0.5] * 3})(image)
    assert torch.equal(timm.data.create_transform(**data)(image), ours)


def test_from_timm_refusals():
    with pytest.raises(ValueError, match="vit_pe_"):
        zoo.from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    rescaled = timm.create_model("vit_pe_core_tiny_patch16_384", pretrained=False, img_size=64, depth=1)  # RoPE scaled from 24x24
    with pytest.raises(ValueError, match="ref_feat_shape"):
        zoo.from_timm(rescaled)


def test_to_open_clip_and_back():
    open_clip = pytest.importorskip("open_clip")
    entry = find_entry("core", "T16")
    sd = meta_clip_state_dict(entry.config, entry.text, seed=7)
    ours = zoo.clip.load_meta_weights(zoo.create_clip(entry.name, device="meta"), sd).eval()
    theirs = zoo.to_open_clip(ours).eval()
    assert type(theirs).__module__.startswith("open_clip.")
    from zoo.integrations.open_clip import open_clip_name

    texts = ["a dog", "a diagram of a circuit board"]
    tokens = open_clip.get_tokenizer(open_clip_name(entry))(texts)
    assert torch.equal(tokens, zoo.get_tokenizer(entry.name)(texts))  # the same tokenizer
    image = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img, txt = ours.encode_image(image), ours.encode_text(tokens)
        assert img.abs().mean() > 0.1
        assert (theirs.encode_image(image) - img).abs().max() <= TOL
        assert (theirs.encode_text(tokens) - txt).abs().max() <= TOL
        back = zoo.from_open_clip(theirs).eval()
        assert (back.encode_image(image) - img).abs().max() <= TOL
        assert (back.encode_text(tokens) - txt).abs().max() <= TOL
    assert back.logit_scale.item() == ours.logit_scale.item()


# ------------------------------------------------------------------------- PE-Lang -Tiling
def test_tiling_checkpoints_are_served():
    names = zoo.list_pretrained_models("*pe-lang-tiling")
    assert names == ["rope_i_vit_g14_pn_npn_avg_ls_c1_pe-lang-tiling", "rope_i_vit_reg1_l14_pn_npn_avg_ls_c1_pe-lang-tiling"]
    for name in names:
        e, base = get_entry(name), get_entry(name.removesuffix("-tiling"))
        assert e.config == base.config and e.family == "lang"
        assert e.source.repo == base.source.repo + "-Tiling" and e.source.file == base.source.file.replace(".pt", "-Tiling.pt")
        assert find_entry("lang", e.variant) is e
    from zoo.weights import converter_command

    assert converter_command(get_entry(names[1])) == "python -m converters.pe_lang --variant L14 --tiling"


def test_tiling_converter_refuses_a_wrong_checkpoint_naming_the_tiling_entry(tmp_path, capsys):
    from converters.pe_lang import main

    src = tmp_path / "t16.pt"
    torch.save(meta_vision_state_dict(SPATIAL.config, seed=1), src)
    assert main(["--variant", "L14", "--tiling", "--checkpoint", str(src), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "pe-lang-tiling" in out.err + out.out and not list(tmp_path.glob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["L14", "G14"])
def test_tiling_checkpoints_convert_and_load_full_size(variant, hub, tmp_path):
    entry = find_entry("lang", f"{variant}-Tiling")
    vision = add_meta_source(hub, entry, tmp_path)
    net, info = zoo.load_pretrained_model(entry.name, inference=True)
    assert info.name == entry.name and net.cfg == entry.config
    P = entry.config.patch_size
    x = torch.randn(1, 3, 4 * P, 4 * P)
    from tests.oracle import timm_model, timm_outputs

    ref = timm_outputs(timm_model(entry, entry.config, vision, 4 * P, 4 * P, lean=True), x)
    with torch.no_grad():
        assert (net.forward_features(x) - ref["tokens"]).abs().max() <= TOL


# ------------------------------------------------------------------------------ birder
birder = pytest.importorskip("birder")


@pytest.fixture
def image_folders(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for c in ("cat", "dog"):
            folder = tmp_path / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")  # no resize: both sides see the same pixels
    return tmp_path


def birder_cli(cwd, *args):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "zoo.birder", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


def test_birder_help_lists_scripts_and_tools():
    from zoo.birder.scripts import SCRIPTS, TOOLS, run

    assert {"train", "train_detection", "predict", "predict_detection", "benchmark"} <= set(SCRIPTS)
    assert "model-info" in TOOLS
    from zoo.cli import main
    from zoo.cli.birder import main as birder_main

    assert main(["birder", "--help"]) == 0
    assert birder_main(["no_such_script"]) == 2
    with pytest.raises(ValueError, match="neither a birder script"):
        run(["no_such_script"])


TRAIN = ["train", "--network", CORE.name, "--pretrained", "--reset-head", "--data-path", "training", "--val-path", "validation",
         "--size", 32, "--epochs", 1, "--batch-size", 4, "-j", 0, "--device", "cpu", "--save-frequency", 1]


def birder_in_process(*args) -> int:
    """birder's script in this process, as ``python -m zoo.birder`` runs it (no interpreter start-up)."""
    import logging

    from zoo.birder.scripts import run

    handlers = logging.getLogger().handlers[:]
    try:
        return run([str(a) for a in args])
    finally:
        logging.getLogger().handlers[:] = handlers  # birder's scripts configure the root logger


def test_birder_train_starts_from_the_zoo_weights_and_comes_back(hub, tmp_path, image_folders, monkeypatch):
    add_meta_source(hub, CORE, tmp_path)
    monkeypatch.chdir(image_folders)
    assert birder_in_process(*TRAIN, "--lr", 0) == 0
    saved = torch.load(image_folders / "models" / f"{CORE.name}_1.pt", weights_only=True)
    pretrained, _ = zoo.load_pretrained_model(CORE.name)
    body = {k[5:]: v for k, v in saved["state"].items() if k.startswith("body.")}
    want = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("clip_proj.")}
    assert body.keys() == want.keys() and all(torch.equal(body[k], want[k]) for k in want)  # lr 0: the zoo's weights

    net, info = zoo.load_pretrained_model(image_folders / "models" / f"{CORE.name}_1.pt", inference=True)
    assert info.class_to_idx == {"cat": 0, "dog": 1} and info.name == CORE.name and info.size == (32, 32)
    assert torch.equal(net.head.weight, saved["state"]["classifier.weight"])
    assert birder_in_process("predict", "--network", CORE.name, "--epoch", 1, "--size", 32, "--save-output", "validation") == 0
    outputs = sorted((image_folders / "results").glob("*.csv"))
    assert outputs, "birder's predict wrote no results"
    import csv

    rows = list(csv.DictReader(outputs[0].open()))
    transform = info.transform() if hasattr(info, "transform") else zoo.classification_transform(info.size, info.rgb_stats)
    for row in rows:
        x = transform(Image.open(image_folders / row["sample"]) if not row["sample"].startswith("/") else Image.open(row["sample"]))
        with torch.no_grad():
            ours = torch.softmax(net(x.unsqueeze(0)), dim=-1)[0]
        assert abs(float(row["dog"]) - ours[1].item()) <= 1e-4


@pytest.mark.slow
def test_birder_train_with_a_learning_rate_changes_the_weights(hub, tmp_path, image_folders):
    """The command line itself, in a process of its own."""
    add_meta_source(hub, CORE, tmp_path)
    run = birder_cli(image_folders, *TRAIN, "--lr", 0.01)
    assert run.returncode == 0, run.stderr[-3000:]
    net, info = zoo.load_pretrained_model(image_folders / "models" / f"{CORE.name}_1.pt")
    pretrained, _ = zoo.load_pretrained_model(CORE.name)
    assert not torch.equal(net.blocks[0].attn.qkv.weight, pretrained.blocks[0].attn.qkv.weight)


@pytest.mark.slow
def test_birder_torchrun_two_processes_on_cpu(hub, tmp_path, image_folders):
    import os

    add_meta_source(hub, CORE, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "zoo.birder",
         *map(str, TRAIN), "--lr", 0.01],
        cwd=image_folders, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (image_folders / "models" / f"{CORE.name}_1.pt").is_file()
