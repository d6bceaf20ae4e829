"""Helpers for loader tests: synthetic Meta checkpoints and a temporary, offline Hub cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from zoo.testing.hub_cache import add_file, use_cache
from zoo.nets.text import TextConfig
from zoo.registry import Entry, get_entry
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict

CORE = get_entry("rope_i_vit_t16_pn_aps_c1_pe-core")
SPATIAL = get_entry("rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial")
# a small text tower keeps the synthetic CLIP files small (the loader drops it anyway)
SMALL_TEXT = TextConfig(width=64, depth=1, heads=2, mlp_dim=128, context_length=32, vocab_size=100)


def write_meta_checkpoint(entry: Entry, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a Meta-layout checkpoint of ``entry`` (a CLIP file for Core) and return its vision tensors."""
    if entry.family == "core":
        sd = meta_clip_state_dict(entry.config, SMALL_TEXT, seed=seed)
        vision = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    else:
        sd = vision = meta_vision_state_dict(entry.config, seed=seed)
    torch.save(sd, path)
    return vision


def add_meta_source(cache: Path, entry: Entry, tmp: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Put a synthetic Meta checkpoint of ``entry`` into the Hub cache where ``download_source`` finds it."""
    src = tmp / f"{entry.name}-{seed}.pt"
    vision = write_meta_checkpoint(entry, src, seed)
    add_file(cache, entry.source.repo, entry.source.file, src)
    return vision


def file_mappings(path: str | os.PathLike) -> list[tuple[int, int]]:
    """The address ranges [start, end) this process has mapped from the file at ``path`` (/proc/self/maps)."""
    real = os.path.realpath(path)
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real:
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def assert_memory_mapped(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Every tensor's storage lies inside a mapping of the file at ``path``: read in place, not copied."""
    ranges = file_mappings(path)
    assert ranges, f"{path} is not memory-mapped"
    for name, t in tensors.items():
        storage = t.untyped_storage()
        lo, hi = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        assert any(a <= lo and hi <= b for a, b in ranges), f"{name} is a copy, not in a mapping of {path}"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty offline Hub cache (HF_HUB_OFFLINE=1) and a fresh zoo weights folder ($ZOO_HOME)."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    with use_cache(cache, offline=True):
        yield cache
