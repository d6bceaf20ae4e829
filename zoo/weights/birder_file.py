"""Checkpoints written by birder's training scripts on zoo networks, read back as zoo nets (no birder needed).

birder saves ``models/<network>[_<tag>]_<epoch>.pt``: a dict with the network's ``state`` (the zoo net under
``body.``, the classifier under ``classifier.``), ``signature``, ``class_to_idx`` and ``rgb_stats``. It does
not record the network's name, so the zoo checkpoint is found from the tensors' shapes (and, where two
share an architecture, from the file name).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.nets.pe_vit import PEConfig
from zoo.registry import Entry, load_registry
from zoo.weights.convert import expected_shapes

_KEYS = {"state", "signature", "class_to_idx", "rgb_stats"}


@dataclass(frozen=True)
class BirderCheckpoint:
    """What a birder checkpoint of a zoo network holds, in the zoo's terms."""

    entry: Entry  # the zoo checkpoint it was trained from
    config: PEConfig  # its architecture as saved (no CLIP projection: birder's nets end at the embedding)
    state: dict[str, torch.Tensor]  # PEViT keys, the classifier as ``head``
    class_to_idx: dict[str, int]
    size: tuple[int, int]
    rgb_stats: dict[str, list[float]]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, or one that needs code execution: not a birder checkpoint
        return None
    return data if isinstance(data, dict) and _KEYS <= set(data) and isinstance(data["state"], dict) else None


def is_birder_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.pt`` file in birder's checkpoint format."""
    p = Path(path)
    return p.suffix == ".pt" and p.is_file() and _load(p) is not None


def read_birder_checkpoint(path: str | os.PathLike) -> BirderCheckpoint:
    """The zoo view of a birder checkpoint trained on a zoo network (``python -m zoo.birder train``)."""
    p = Path(path)
    data = _load(p)
    if data is None:
        raise ValueError(f"{p} is not a birder checkpoint (a .pt dict with state, signature, class_to_idx and rgb_stats)")
    state: dict[str, torch.Tensor] = {}
    for k, v in data["state"].items():
        if k.startswith("body."):
            state[k[len("body."):]] = v
        elif k in ("classifier.weight", "classifier.bias"):
            state["head." + k.split(".", 1)[1]] = v
        else:
            raise ValueError(f"{p} holds {k!r}, which no zoo network has: it was not trained on a zoo network")
    if "patch_embed.weight" not in state or "pos_embed" not in state:
        raise ValueError(f"{p} holds no PE vision tower (no body.patch_embed.weight)")
    width, _, patch, _ = state["patch_embed.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    matches = []
    for e in load_registry().values():
        c = e.config
        cfg = dataclasses.replace(c, depth=depth, clip_dim=None)
        if (c.width, c.patch_size) == (width, patch):
            want = expected_shapes(cfg)
            got = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("head.")}
            if {k: tuple(v) for k, v in want.items()} == got:
                matches.append((e, cfg))
    if not matches:
        raise ValueError(f"{p}: its tensors match no zoo checkpoint's architecture")
    named = [m for m in matches if p.name.startswith(m[0].name)]
    entry, cfg = (named or sorted(matches, key=lambda m: m[0].variant.endswith("-Tiling")))[0]
    shape = data["signature"]["inputs"][0]["data_shape"]
    classes = {str(k): int(v) for k, v in data["class_to_idx"].items()}
    stats = {k: [float(x) for x in v] for k, v in data["rgb_stats"].items()}
    return BirderCheckpoint(entry, cfg, state, classes, (int(shape[2]), int(shape[3])), stats)


__all__ = ["BirderCheckpoint", "is_birder_checkpoint", "read_birder_checkpoint"]
