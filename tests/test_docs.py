"""Every ```python block of README.md and docs/*.md runs as pasted.

One test per page: its blocks run in order in one namespace, in a fresh empty folder, offline
(``HF_HUB_OFFLINE=1``, ``HF_HOME`` empty), with a temporary Hub cache that holds random Meta-layout
checkpoints of the T16 registry models (PE-Core T16 with its CLIP text tower, PE-Spatial T16) and a
``$ZOO_HOME`` the pages share (the first load converts each checkpoint into it once). A block right after the line ``<!-- no-run -->`` is shown,
not run (real data, a GPU, hours).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from zoo.registry import get_entry
from zoo.testing.hub_cache import add_file, use_cache
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
T16 = ["rope_i_vit_t16_pn_aps_c1_pe-core", "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial"]
NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block not marked ``<!-- no-run -->`` on the line before it."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if before != NO_RUN:
            blocks.append((text.count("\n", 0, m.start()) + 2, m.group(2)))
    return blocks


@pytest.fixture(scope="module")
def hub_cache(module_tmp):
    """An offline Hub cache holding Meta-layout checkpoints (seeded random weights) of the T16 models, and the
    weights folder the pages share."""
    cache = module_tmp / "hub"
    for name in T16:
        entry = get_entry(name)
        if entry.family == "core":
            sd = meta_clip_state_dict(entry.config, entry.text, seed=0)
        else:
            sd = meta_vision_state_dict(entry.config, seed=0)
        src = module_tmp / entry.source.file
        torch.save(sd, src)
        add_file(cache, entry.source.repo, entry.source.file, src)
        src.unlink()
    return cache, module_tmp / "zoo-home"


def test_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n<!-- no-run -->\n```python\nnever()\n```\n```bash\nls\n```\n\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (14, "y = x\n")]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_runs(page: Path, hub_cache: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text())
    if not blocks:
        return
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    cache, zoo_home = hub_cache
    monkeypatch.setenv("ZOO_HOME", str(zoo_home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    namespace: dict[str, object] = {"__name__": "__main__"}
    with use_cache(cache, offline=True):
        for line, code in blocks:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)


def test_every_page_is_written_and_in_the_nav():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().split("\nhooks:", 1)[0] + "\n" + "nav:" + (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1])["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(nav))
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in listed, f"docs/{page.name} is not in mkdocs.yml's nav"
        assert "TODO-PAGE" not in page.read_text(), f"docs/{page.name} is still a placeholder"
