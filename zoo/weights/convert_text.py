"""Meta's PE-Core text tower (the non-``visual.`` keys of a CLIP file) -> the zoo's text layout.

| Meta                                          | zoo (``PEText`` + ``logit_scale``)        |
|-----------------------------------------------|-------------------------------------------|
| ``token_embedding.weight``                    | ``token_embed.weight``                    |
| ``positional_embedding``                      | ``pos_embed``                             |
| ``transformer.resblocks.{i}.*``               | ``blocks.{i}.*`` (as the vision blocks)   |
| ``ln_final.*``                                | ``norm_final.*``                          |
| ``text_projection`` [W, out]                  | ``proj.weight`` [out, W] (transposed)     |
| ``logit_scale`` (scalar, use exp())           | ``logit_scale``                           |

``attn_mask`` (a causal-mask buffer some files carry) is not a weight and is skipped. The text file,
``<name>_text.safetensors``, sits beside the vision file, so vision-only users never hold it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from zoo.nets.text import PEText, TextConfig
from zoo.registry import Entry
from zoo.weights.convert import (
    ConvertResult, Transform, file_metadata, map_vision_key, plan_problems, plan_specs, refuse_existing, source_dtype, write_weights,
)
from zoo.weights.errors import ConversionError
from zoo.weights.source import load_source, unwrap_state_dict
from zoo.weights.writer import TensorSpec

Tensor = torch.Tensor
SKIPPED = ("attn_mask",)
_TOP = {
    "token_embedding.weight": "token_embed.weight",
    "positional_embedding": "pos_embed",
    "ln_final.weight": "norm_final.weight",
    "ln_final.bias": "norm_final.bias",
    "logit_scale": "logit_scale",
}


def _same(t: Tensor) -> Tensor:
    return t


def _transpose(t: Tensor) -> Tensor:
    return t.t()


def map_text_key(key: str) -> tuple[str, Transform] | None:
    """Zoo key and transform for one Meta text-tower key; None if the key is unknown."""
    if key in _TOP:
        return _TOP[key], _same
    if key == "text_projection":
        return "proj.weight", _transpose
    if key.startswith("transformer.resblocks."):
        targets = map_vision_key(key, 0)  # the width only matters for the vision pooling head
        if targets is not None and len(targets) == 1 and not targets[0][0].endswith("gamma"):
            return targets[0]
    return None


def has_text_tower(state: Mapping[str, Tensor]) -> bool:
    """Whether a (unwrapped) state dict carries a CLIP text tower at all."""
    return "token_embedding.weight" in state or "text_projection" in state


def split_text(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The text-tower keys of a CLIP state dict (everything beside ``visual.``, without ``attn_mask``)."""
    if not has_text_tower(state):
        raise ConversionError(
            "the checkpoint has no text tower (only PE-Core CLIP files carry one; Spatial and Lang are vision-only)"
        )
    return {k: v for k, v in state.items() if not k.startswith("visual.") and k not in SKIPPED}


def expected_text_shapes(text: TextConfig, out_dim: int) -> dict[str, torch.Size]:
    """Every tensor of the zoo text file for ``text``: the ``PEText`` weights plus ``logit_scale``."""
    with torch.device("meta"):
        net = PEText(text, out_dim)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    shapes["logit_scale"] = torch.Size([])
    return shapes


def plan_text_conversion(
    text_state: Mapping[str, Tensor], text: TextConfig, out_dim: int, what: str = "this checkpoint"
) -> list[tuple[str, str, Transform]]:
    """Check a text state dict against ``text`` and return ``(zoo_key, meta_key, transform)`` for every tensor.

    Strict like the vision plan: unknown, surplus and missing keys and wrong shapes all raise
    ``ConversionError``; only shapes are read.
    """
    want = expected_text_shapes(text, out_dim)
    plan, unknown = [], []
    for key in text_state:
        target = map_text_key(key)
        if target is None:
            unknown.append(key)
        else:
            plan.append((target[0], key, target[1]))
    problems = plan_problems(plan, text_state, want, unknown)
    if problems:
        raise ConversionError(
            f"the text tower of {what} does not fit the requested one (width {text.width}, depth {text.depth}, "
            f"context {text.context_length}, output {out_dim}): " + "; ".join(problems)
        )
    return plan


def meta_text_to_zoo(state_dict: Mapping[str, Tensor], text: TextConfig, out_dim: int) -> dict[str, Tensor]:
    """Convert the text tower of a Meta PE-Core CLIP state dict (nested or ``module.``-prefixed) to the zoo layout."""
    text_state = split_text(unwrap_state_dict(state_dict))
    return {z: fn(text_state[m]) for z, m, fn in plan_text_conversion(text_state, text, out_dim)}


# ---- whole files: the text tower of Meta's CLIP file -> <name>_text.safetensors ----

def text_weights_file(entry: Entry) -> str:
    """The file name of an entry's text weights: ``<name>_text.safetensors``, beside the vision file."""
    return entry.weights.file.removesuffix(".safetensors") + "_text.safetensors"


def text_specs(
    entry: Entry, state: Mapping[str, Tensor], dtype: torch.dtype | None = None, what: str = "this checkpoint"
) -> list[TensorSpec]:
    """Every tensor of an entry's text file, checked strictly against the registry (shapes only are read)."""
    if entry.text is None:
        raise ConversionError(f"{entry.name} is not a CLIP model: only PE-Core checkpoints have a text tower")
    text_state = split_text(state)
    return plan_specs(plan_text_conversion(text_state, entry.text, entry.config.clip_dim, what), text_state, dtype)


def convert_text_checkpoint(
    entry: Entry,
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    force: bool = False,
    source_sha256: str | None = None,
) -> ConvertResult:
    """Convert the text tower of Meta's CLIP checkpoint ``source`` into ``out_dir/<name>_text.safetensors``.

    Streaming, strict and atomic like ``convert_checkpoint``, with the same metadata plus ``text_config``.
    """
    out = Path(out_dir) / text_weights_file(entry)
    refuse_existing(out, force)
    state = load_source(source)
    specs = text_specs(entry, state, dtype or source_dtype(state), what=f"{Path(source).name} (requested: {entry.name})")
    metadata = file_metadata(entry, source, source_sha256, specs)
    metadata["text_config"] = json.dumps(dataclasses.asdict(entry.text))
    size, sha = write_weights(out, specs, metadata, force)
    return ConvertResult(path=out, size=size, sha256=sha, dropped=[k for k in state if k.startswith("visual.") or k in SKIPPED])


__all__ = [
    "has_text_tower", "map_text_key", "split_text", "expected_text_shapes", "plan_text_conversion", "meta_text_to_zoo",
    "text_weights_file", "text_specs", "convert_text_checkpoint",
]
