"""model_cards/: Hub metadata, in sync with the registry, and every stated shape true of the net."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

import zoo
from converters import cards as cards_cli
from tests.oracle import timm_model, timm_outputs
from zoo.cards import IMAGE_PLACEHOLDER, PRINTS, render_card
from zoo.weights import read_metadata
from zoo.weights.convert_text import text_weights_file
from zoo.testing.hub_cache import add_file, use_cache
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict

CARDS = Path(__file__).resolve().parent.parent / "model_cards"
NAMES = zoo.list_pretrained_models()
ARXIV = {"vit": "2010.11929", "rope-vit": "2403.13298", "perception-encoder": "2504.13181", "perceptionlm": "2504.13180"}


def card_text(name: str) -> str:
    return (CARDS / f"{name}.md").read_text(encoding="utf-8")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def stated_outputs(block: str) -> list[object]:
    """The values a block says its print() calls show (``# prints: ...`` lines)."""
    return [ast.literal_eval(line[len(PRINTS):]) for line in block.splitlines() if line.startswith(PRINTS)]


def test_cards_in_sync_with_registry(tmp_path):
    assert cards_cli.main(["--out", str(tmp_path)]) == 0
    fresh = sorted(p.name for p in tmp_path.glob("*.md"))
    assert fresh == sorted(p.name for p in CARDS.glob("*.md")) == sorted(f"{n}.md" for n in NAMES)
    for name in fresh:
        assert (CARDS / name).read_text() == (tmp_path / name).read_text(), (
            f"model_cards/{name} is out of date with registry.yaml; regenerate the cards with `python -m converters.cards`"
        )


def test_check_mode_names_the_fix(tmp_path, capsys):
    shutil.copytree(CARDS, tmp_path, dirs_exist_ok=True)
    assert cards_cli.main(["--out", str(tmp_path), "--check"]) == 0
    edited = tmp_path / f"{NAMES[0]}.md"
    edited.write_text(edited.read_text().replace("Embedding width", "Width"))
    (tmp_path / "rope_i_vit_old.md").write_text("stale")
    assert cards_cli.main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{NAMES[0]}.md" in err and "`python -m converters.cards`" in err
    assert "rope_i_vit_old.md" in err and "no registry entry" in err
    assert "- **Width:** " in edited.read_text()  # --check writes nothing


@pytest.mark.parametrize("name", NAMES)
def test_card_metadata_loads_on_the_hub_schema(name):
    e = get_entry(name)
    card = ModelCard.load(CARDS / f"{name}.md")
    d = card.data
    assert {"image-feature-extraction", "pytorch"} <= set(d.tags)
    assert d.library_name == "pe-zoo" and d.license == "apache-2.0"
    assert d.base_model == e.source.repo == f"facebook/{e.source.file.removesuffix('.pt')}"
    assert d.pipeline_tag == "image-feature-extraction"
    assert card.text.lstrip().startswith(f"# {name}\n")


@pytest.mark.parametrize("name", NAMES)
def test_card_facts_come_from_the_net_and_registry(name):
    e, text = get_entry(name), card_text(name)
    params = zoo.create_model(name, device="meta").backbone_parameters()
    assert f"({params:,})" in text
    assert f"**Input size:** {e.config.image_size} x {e.config.image_size} px" in text
    assert f"**Embedding width:** {e.config.width}" in text and f"**Patch size:** {e.config.patch_size}" in text
    cited = set(re.findall(r"eprint\s*=\s*\{([\d.]+)\}", text))
    assert cited == {ARXIV[p] for p in e.papers} and len(cited) == (4 if e.family == "lang" else 3)
    assert re.search(r"@misc\{cho2025perceptionlm", text) if e.family == "lang" else "PerceptionLM" not in text
    size, _, tiling = e.variant.partition("-")
    assert f"python -m converters.pe_{e.family} --variant {size}{' --tiling' if tiling else ''}\n" in text
    if e.family == "core":
        assert f"({e.config.width} -> {e.config.clip_dim})" in text and "`net.clip_embedding(x)`" in text
        assert "before that projection" in text
    else:
        assert "no pooling head" in text and "mean of the patch tokens" in text and "clip_embedding" not in text


def test_published_weights_appear_in_the_card():
    e = get_entry(NAMES[0])
    assert "sha256 of the converted file" not in card_text(e.name) and "huggingface.co/someone" not in card_text(e.name)
    published = dataclasses.replace(e, weights=dataclasses.replace(e.weights, sha256="ab" * 32, hub_repo="someone/pe"))
    text = render_card(published)
    assert f"sha256 of the converted file: `{'ab' * 32}`" in text
    assert "[someone/pe](https://huggingface.co/someone/pe)" in text


@pytest.mark.parametrize("name", NAMES)
def test_stated_shapes_match_the_net_on_meta_device(name):
    """Every shape a card prints is what the net really produces (computed shape-only on the meta device)."""
    e = get_entry(name)
    net = zoo.create_model(name, device="meta")
    x = torch.empty(1, 3, e.config.image_size, e.config.image_size, device="meta")
    blocks = python_blocks(card_text(name))
    assert len(blocks) == (3 if e.family == "core" else 2)
    stated = [stated_outputs(b) for b in blocks]
    actual = [
        [tuple(net.embedding(x).shape)],
        [[(k, tuple(v.shape)) for k, v in net.detection_features(x).items()]],
    ]
    if e.family == "core":
        actual.append([tuple(net.clip_embedding(x).shape)])
    assert stated == actual


def normalized(name: str) -> list[str]:
    """The card's Python blocks with the model name and stated outputs blanked out."""
    return [re.sub(rf"^{re.escape(PRINTS)}.*$", PRINTS, b.replace(name, "NAME"), flags=re.M)
            for b in python_blocks(card_text(name))]


@pytest.mark.parametrize("name", [n for n in NAMES if get_entry(n).variant[0] in "SBLG"])
def test_large_cards_run_the_same_code_as_a_small_card(name):
    """S/B/L/G snippets are the T16 models' (which the run test executes), up to the name and the stated shapes."""
    e = get_entry(name)
    small = zoo.registry.find_entry("core" if e.family == "core" else "spatial", "T16").name
    assert normalized(name) == normalized(small)


def test_snippets_use_the_image_placeholder():
    for name in NAMES:
        for block in python_blocks(card_text(name)):
            assert IMAGE_PLACEHOLDER in block and f'"{name}"' in block


# ---- the snippets of the small cards, executed end to end -------------------------------------
SMALL = [n for n in NAMES if get_entry(n).variant[0] == "T"]  # executed end to end (S/B/L/G: the same code, by the test above)


@pytest.fixture(scope="module")
def meta_hub(module_tmp):
    """Synthetic Meta checkpoints of the small models in a real Hub cache; offline; an empty ZOO_HOME.

    PE-Core T16 is a full CLIP file (text tower beside ``visual.``), the others vision-only files.
    Yields ``(tmp, {name: meta vision state dict})``.
    """
    tmp = module_tmp
    vision = {}
    for seed, name in enumerate(SMALL):
        e = get_entry(name)
        vision[name] = meta_vision_state_dict(e.config, seed=10 + seed)
        sd = meta_clip_state_dict(e.config, e.text, seed=10 + seed) if e.variant == "T16" and e.text else vision[name]
        src = tmp / e.source.file
        torch.save(sd, src)
        add_file(tmp / "hub", e.source.repo, e.source.file, src)
        src.unlink()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (180, 260, 3), dtype=np.uint8)).save(tmp / "photo.jpg")
    with pytest.MonkeyPatch.context() as mp, use_cache(tmp / "hub", offline=True):
        mp.setenv("ZOO_HOME", str(tmp / "zoo_home"))
        yield tmp, vision


def run_block(code: str, label: str) -> tuple[list[object], dict]:
    """Execute one card snippet in a fresh namespace; the values it printed and its namespace."""
    ns: dict = {"__name__": "__card__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, label, "exec"), ns)
    return [ast.literal_eval(line) for line in out.getvalue().splitlines()], ns


@pytest.mark.parametrize("name", SMALL)
def test_small_card_rebuilds_and_runs_as_written(name, meta_hub):
    """The card's rebuild command (Meta's file from the offline Hub cache into ZOO_HOME), then every Python block:
    each prints exactly what the card states; for T16 the values are also checked against timm."""
    tmp, vision = meta_hub
    e = get_entry(name)
    text = card_text(name).replace(IMAGE_PLACEHOLDER, str(tmp / "photo.jpg"))
    command = re.search(r"^```bash\n(python -m converters\.\S+ .*)\n```$", text, flags=re.M).group(1).split()
    assert importlib.import_module(command[2]).main(command[3:]) == 0
    assert read_metadata(tmp / "zoo_home" / "weights" / e.weights.file)["name"] == name
    if e.family == "core" and e.variant == "T16":  # the full CLIP file: the text tower goes to its own file
        assert read_metadata(tmp / "zoo_home" / "weights" / text_weights_file(e))["name"] == name
    blocks = python_blocks(text)
    assert len(blocks) == (3 if e.family == "core" else 2)
    ref = None
    if e.variant == "T16":
        x = zoo.classification_transform(e.size, e.rgb_stats)(Image.open(tmp / "photo.jpg")).unsqueeze(0)
        ref = timm_outputs(timm_model(e, e.config, vision[name], *e.size), x)
    for i, block in enumerate(blocks):
        printed, ns = run_block(block, f"model_cards/{name}.md, python block {i + 1}")
        assert printed == stated_outputs(block), f"python block {i + 1} of {name}'s card printed {printed}"
        if ref is None:
            continue
        if "embedding" in ns:  # infer_image's NumPy output
            torch.testing.assert_close(torch.from_numpy(ns["embedding"]), ref["embedding"], rtol=1e-4, atol=1e-4)
        if "features" in ns:
            g = e.config.grid
            tokens = ref["tokens"][:, e.config.num_prefix_tokens:].transpose(1, 2).reshape(1, -1, g, g)
            torch.testing.assert_close(ns["features"]["neck"], tokens, rtol=1e-4, atol=1e-4)
        if "clip" in ns:
            torch.testing.assert_close(ns["clip"], ref["clip"], rtol=1e-4, atol=1e-4)
