"""The self-describing file of a fine-tuned net: what it was trained from, its classes, and its tensors.

One safetensors file whose metadata holds ``format: pe-zoo-finetuned`` and a JSON ``finetune`` record
(base registry name and the sha256 of the base weights it started from, ``class_to_idx``, input size,
training arguments, ``tensors``: ``"head"`` when only the classifier head is stored, the backbone being
the verified base weights, or ``"full"`` when every tensor of the net is stored). Its sha256 is recorded
beside it when written and checked on every load, as for converted weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from zoo.weights.errors import WeightsIntegrityError
from zoo.weights.integrity import read_metadata, record, verify
from zoo.weights.resolver import read_tensors
from zoo.weights.writer import TensorSpec, write_safetensors

FORMAT = "pe-zoo-finetuned"
KINDS = ("head", "full")


def is_finetuned_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` (where a registry name would go) is written as a path: a ``PathLike``, ``*.safetensors``,
    or with a folder separator (``./NAME``). A bare name is a registry name, even when a file of that name is
    in the current folder: a stray file never replaces a registry model."""
    if isinstance(name, os.PathLike):
        return True
    s = os.fspath(name)
    return s.endswith(".safetensors") or "/" in s or os.sep in s or bool(os.altsep and os.altsep in s)


def write_finetuned(path: str | os.PathLike, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> str:
    """Write ``tensors`` with the ``info`` record (atomically) and record the file's sha256; return it."""
    if info.get("tensors") not in KINDS:
        raise ValueError(f"info['tensors'] must be one of {KINDS}, got {info.get('tensors')!r}")
    specs = [TensorSpec(k, tuple(v.shape), v.dtype, lambda v=v: v.detach().cpu().contiguous()) for k, v in tensors.items()]
    _, sha = write_safetensors(path, specs, {"format": FORMAT, "finetune": json.dumps(info, sort_keys=True)})
    record(path, sha)
    return sha


def read_finetuned(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``finetune`` record and the tensors (memory-mapped) of a verified fine-tuned file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tuned model file at {path} (give a registry name, or the .safetensors that `python -m zoo finetune` wrote)")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "finetune" not in meta:
        raise WeightsIntegrityError(
            f"{path} is not a pe-zoo fine-tuned model (its metadata has no format {FORMAT!r}); "
            "pass a registry name, or a file written by `python -m zoo finetune`"
        )
    verify(path, None, rebuild=f"python -m zoo finetune ... --out {path.parent}")
    info = json.loads(meta["finetune"])
    return info, read_tensors(path)


__all__ = ["FORMAT", "is_finetuned_path", "read_finetuned", "write_finetuned"]
