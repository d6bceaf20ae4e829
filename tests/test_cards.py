"""model_cards/: Hub metadata, in sync with the registry, and every stated shape true of the net."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import zoo
from converters import cards as cards_cli
from zoo.cards import IMAGE_PLACEHOLDER, PRINTS
from zoo.registry import get_entry

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
    assert f"python -m converters.pe_{e.family} --variant {e.variant}\n" in text
    if e.family == "core":
        assert f"({e.config.width} -> {e.config.clip_dim})" in text and "`net.clip_embedding(x)`" in text
        assert "before that projection" in text
    else:
        assert "no pooling head" in text and "mean of the patch tokens" in text and "clip_embedding" not in text


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


@pytest.mark.parametrize("name", [n for n in NAMES if get_entry(n).variant[0] in "LG"])
def test_large_cards_run_the_same_code_as_a_small_card(name):
    """L/G snippets are the small models' (which the run test executes), up to the name and the stated shapes."""
    e = get_entry(name)
    small = zoo.registry.find_entry("core" if e.family == "core" else "spatial", "T16").name
    assert normalized(name) == normalized(small)


def test_snippets_use_the_image_placeholder():
    for name in NAMES:
        for block in python_blocks(card_text(name)):
            assert IMAGE_PLACEHOLDER in block and f'"{name}"' in block
