"""load_pretrained_clip, the text file the Core converter writes, and `python -m zoo classify`: real
huggingface_hub code paths through an offline Hub cache, results checked against open_clip."""

import dataclasses
import json
import os

import huggingface_hub.constants

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.models.eva import checkpoint_filter_fn

import zoo
from converters.pe_core import main as convert_core
from zoo import weights
from zoo.__main__ import main
from zoo.clip import load_clip_entry, load_pretrained_clip, zero_shot_classifier, zero_shot_classify
from zoo.weights import read_metadata
from zoo.weights.convert_text import meta_text_to_zoo, text_weights_file
from zoo.testing.hub_cache import add_file, use_cache
from zoo.paths import weights_dir
from zoo.registry import find_entry
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict
from tests.weights_env import assert_memory_mapped

TOL = 1e-5
T16 = find_entry("core", "T16")
TEXT_FILE = text_weights_file(T16)
CARD_LABELS = ["a diagram", "a dog", "a cat"]


@pytest.fixture(scope="module")
def meta_source(module_tmp):
    """A full-size synthetic PE-Core T16 CLIP checkpoint in Meta's layout (bfloat16 keeps it small) and its state."""
    state = meta_clip_state_dict(T16.config, T16.text, seed=11, dtype=torch.bfloat16)
    path = module_tmp / "PE-Core-T16-384.pt"
    torch.save(state, path)
    return path, state


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty offline Hub cache (HF_HUB_OFFLINE=1) and a fresh weights folder ($ZOO_HOME)."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    with use_cache(tmp_path / "hub-cache", offline=True) as cache:
        yield cache


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


def open_clip_model(state):
    """open_clip's PE-Core T16 (visual tower: timm) holding the same Meta-layout weights, in float32."""
    ref = open_clip.create_model("PE-Core-T-16-384", pretrained=None).eval()
    state = {k: v.float() for k, v in state.items()}
    vision = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    sd = {f"visual.trunk.{k}": v for k, v in checkpoint_filter_fn(vision, ref.visual.trunk).items()}
    sd.update({k if k == "logit_scale" else f"text.{k}": v for k, v in state.items() if not k.startswith("visual.")})
    ref.load_state_dict(sd)
    return ref


def test_card_example_through_offline_hub_cache(meta_source, hub, image_file, capsys, caplog):
    caplog.set_level("INFO", logger="zoo")
    """Meta's card, with only Meta's checkpoint in an offline Hub cache: both files are converted on the spot."""
    src, state = meta_source
    add_file(hub, T16.source.repo, T16.source.file, src)
    assert huggingface_hub.constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"

    model = zoo.load_pretrained_clip(T16.name, inference=True, dtype=torch.float32)
    preprocess = zoo.classification_transform(model.image_size, T16.rgb_stats)
    tokenizer = zoo.get_tokenizer(T16.name)
    image = preprocess(Image.open(image_file)).unsqueeze(0)
    text = tokenizer(CARD_LABELS)
    with torch.no_grad():
        image_features, text_features, logit_scale = model(image, text)
        text_probs = (logit_scale * image_features @ text_features.T).softmax(dim=-1)

    ref = open_clip_model(state)
    with torch.no_grad():
        r_img, r_txt, r_scale = ref(image, open_clip.get_tokenizer("PE-Core-T-16-384")(CARD_LABELS))
        want = (r_scale * r_img @ r_txt.T).softmax(dim=-1)
    assert text_probs.shape == (1, 3) and (text_probs - want).abs().max() <= TOL
    assert (image_features - r_img).abs().max() <= TOL and (text_features - r_txt).abs().max() <= TOL
    assert sorted(p.name for p in weights_dir().glob("*.safetensors")) == sorted([T16.weights.file, TEXT_FILE])
    assert "converting Meta's checkpoint" in caplog.text  # logged through the "zoo" logger
    assert capsys.readouterr().out == ""  # a library call prints nothing
    caplog.clear()
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    again = zoo.load_pretrained_clip(T16.name)  # from the weights folder now: nothing converted
    assert "converting" not in caplog.text
    assert again.logit_scale.dtype == torch.bfloat16 and torch.equal(again.logit_scale.float(), model.logit_scale)


def test_vision_loader_never_touches_the_text_tower(meta_source, hub):
    src, _ = meta_source
    add_file(hub, T16.source.repo, T16.source.file, src)
    zoo.load_pretrained_model(T16.name)
    assert [p.name for p in weights_dir().glob("*.safetensors")] == [T16.weights.file]


def test_converted_repo_in_hub_cache(meta_source, hub, tmp_path):
    src, state = meta_source
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path / "build")]) == 0
    entry = dataclasses.replace(T16, weights=dataclasses.replace(T16.weights, hub_repo="pe-zoo/t16-core"))
    for file in (T16.weights.file, TEXT_FILE):
        add_file(hub, "pe-zoo/t16-core", file, tmp_path / "build" / file)
    model = load_clip_entry(entry)
    assert not weights_dir().exists() or not any(weights_dir().iterdir())  # the Hub files are used as they are
    want = meta_text_to_zoo(state, T16.text, T16.config.clip_dim)
    got = {k: v for k, v in model.text.state_dict().items()} | {"logit_scale": model.logit_scale}
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_both_files_are_memory_mapped_not_copied(meta_source, hub):
    """Right after loading, the vision tower's tensors lie in a mapping of the vision file, the text tower's
    and logit_scale in one of the text file."""
    src, _ = meta_source
    folder = weights_dir()
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(folder)]) == 0
    for inference in (False, True):
        model = load_pretrained_clip(T16.name, inference=inference)
        assert {k.split(".")[0] for k in model.state_dict()} == {"visual", "text", "logit_scale"}
        assert_memory_mapped(model.visual.state_dict(keep_vars=True), folder / T16.weights.file)
        assert_memory_mapped(model.text.state_dict(keep_vars=True) | {"logit_scale": model.logit_scale}, folder / TEXT_FILE)


def test_nothing_cached_offline(hub):
    with pytest.raises(weights.WeightsNotFoundError) as err:
        load_pretrained_clip(T16.name)
    for part in (str(weights_dir() / T16.weights.file), "facebook/PE-Core-T16-384", "python -m converters.pe_core --variant T16"):
        assert part in str(err.value)


def test_text_file_is_verified(meta_source, hub, tmp_path):
    src, _ = meta_source
    folder = weights_dir()
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(folder)]) == 0
    load_pretrained_clip(T16.name)  # records both files' sha256
    text_path = folder / TEXT_FILE
    data = bytearray(text_path.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor
    text_path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsIntegrityError, match="was changed, so it is not loaded"):
        load_pretrained_clip(T16.name)
    (folder / (TEXT_FILE + ".sha256.json")).unlink()
    text_path.write_bytes((folder / T16.weights.file).read_bytes())  # the vision file under the text file's name
    with pytest.raises(weights.WeightsIntegrityError, match="text_config"):
        load_pretrained_clip(T16.name)


def test_core_converter_writes_the_text_file(meta_source, tmp_path, capsys):
    src, state = meta_source
    out = tmp_path / "out"
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".sha256.json")) == sorted([T16.weights.file, TEXT_FILE])
    assert f"wrote {out / TEXT_FILE}" in printed and "dropped" not in printed
    vision_meta, text_meta = read_metadata(out / T16.weights.file), read_metadata(out / TEXT_FILE)
    assert json.loads(text_meta.pop("text_config")) == dataclasses.asdict(T16.text)
    assert text_meta == vision_meta and text_meta["dtype"] == "bfloat16"
    got, want = load_file(out / TEXT_FILE), meta_text_to_zoo(state, T16.text, T16.config.clip_dim)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err


def test_core_converter_is_strict_about_the_text_tower(tmp_path, capsys):
    cut = dataclasses.replace(T16.text, depth=2)
    src = tmp_path / "meta.pt"
    torch.save(meta_clip_state_dict(T16.config, cut), src)
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "missing tensor(s) for ['blocks.10" in err and "--vision-only" in err
    assert not (tmp_path / "out").exists()  # checked before anything was written
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(tmp_path / "out"), "--vision-only"]) == 0
    assert [p.name for p in (tmp_path / "out").glob("*.safetensors")] == [T16.weights.file]
    vision_only = tmp_path / "vision.pt"
    torch.save(meta_vision_state_dict(T16.config), vision_only)
    assert convert_core(["--variant", "T16", "--checkpoint", str(vision_only), "--out", str(tmp_path / "v")]) == 0
    assert "no text tower: writing the vision weights only" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "v").glob("*.safetensors")] == [T16.weights.file]


def test_cli_classify(meta_source, hub, image_file, capsys):
    src, _ = meta_source
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--out", str(weights_dir())]) == 0
    capsys.readouterr()
    labels = ["a cat", "a dog", "a diagram"]
    assert main(["classify", T16.name, str(image_file), str(image_file), "--labels", " a cat, a dog,a diagram ,"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = load_pretrained_clip(T16.name, inference=True, dtype=torch.float32)  # the CLI's default dtype
    image = zoo.classification_transform(model.image_size, T16.rgb_stats)(Image.open(image_file)).unsqueeze(0)
    probs = zero_shot_classify(model, image, zero_shot_classifier(model, zoo.get_tokenizer(T16.name), labels))[0]
    order = probs.argsort(descending=True).tolist()
    assert lines[0] == str(image_file) and lines[4] == str(image_file) and len(lines) == 8
    for rank, (line, i) in enumerate(zip(lines[1:4], order), 1):
        assert line.split()[0] == str(rank) and labels[i] in line and line.endswith(f"{100 * probs[i].item():6.2f}%")


def test_cli_classify_bad_input(hub, image_file, capsys):
    def one_line_error(args):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    assert "no labels" in one_line_error(["classify", T16.name, str(image_file)])
    assert "no labels" in one_line_error(["classify", T16.name, str(image_file), "--labels", " , "])
    assert "closest names" in one_line_error(["classify", "pe-core-t16", str(image_file), "--labels", "a,b"])
    spatial = find_entry("spatial", "T16").name
    assert "no text tower" in one_line_error(["classify", spatial, str(image_file), "--labels", "a,b"])
    assert "python -m converters.pe_core --variant T16" in one_line_error(["classify", T16.name, str(image_file), "--labels", "a,b"])
    with pytest.raises(SystemExit) as e:
        main(["classify", "--help"])
    assert e.value.code == 0 and "--labels" in capsys.readouterr().out


@pytest.mark.parametrize("template, message", [
    ("a {} and a {}", "must hold exactly one '{}'"),
    ("a {} {x}", "must hold exactly one '{}'"),
    ("a {0}", "must hold exactly one '{}'"),
    ("a {} }", "not a valid template"),
    ("a photo", "has no '{}'"),
])
def test_cli_classify_bad_template_is_one_line(template, message, hub, image_file, capsys):
    assert main(["classify", T16.name, str(image_file), "--labels", "a,b", "--template", "{}", "--template", template]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: template ") and message in err and "\n" not in err
    with pytest.raises(ValueError, match="template"):  # the library says the same
        zero_shot_classifier(None, None, ["a"], templates=[template])


def test_text_file_after_vision_only_hint_works(meta_source, hub, capsys):
    """The hint for a missing text file (after --vision-only) is a command that writes just that file."""
    src, _ = meta_source
    assert convert_core(["--variant", "T16", "--checkpoint", str(src), "--vision-only"]) == 0
    with pytest.raises(weights.WeightsNotFoundError) as err:
        load_pretrained_clip(T16.name)
    hint = "python -m converters.pe_core --variant T16 --text-only"
    assert hint in str(err.value)
    args = hint.split()[3:]
    assert convert_core(args + ["--checkpoint", str(src)]) == 0
    assert f"wrote {weights_dir() / TEXT_FILE}" in capsys.readouterr().out
    load_pretrained_clip(T16.name)
    assert convert_core(args + ["--checkpoint", str(src)]) == 1  # and now it exists
    assert "already exists; pass --force" in capsys.readouterr().err
