"""Labelled embeddings for k-NN and the linear probe: image folders embedded once, ``zoo embed`` folders read as they are."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoo.eval import data as eval_data
from zoo.eval.embed import Compute, embed_images, load_vision, normalized
from zoo.registry import get_entry
from zoo.weights import is_finetuned_path


@dataclass
class Features:
    """Training rows (blocks of raw embeddings, in order) and labels; normalised validation rows and labels."""

    classes: list[str]
    train_blocks: list[Any]
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor


def as_rows(block: Any) -> torch.Tensor:
    """A block of rows (a tensor, a NumPy array or a memory-mapped shard) as a float32 tensor of its own."""
    if isinstance(block, torch.Tensor):
        return block.float()
    return torch.from_numpy(np.array(block, dtype=np.float32))


def _space(name: str, sides: list[eval_data.Labelled], compute: Compute) -> tuple[bool, Compute]:
    """Whether to use CLIP-space rows, and the compute settings, so that every side is embedded alike.

    With a ``zoo embed`` folder the images of the other side are embedded as it was (its ``what``, size and
    dtype); a folder of another model, or settings that contradict it, are refused.
    """
    manifests = [s.manifest for s in sides if s.manifest is not None]
    if not manifests:
        return False, compute
    if is_finetuned_path(name):
        raise ValueError(f"{sides[0].root if sides[0].manifest else sides[1].root} holds embeddings of a registry checkpoint, "
                         f"not of the fine-tuned file {name}; give image folders")
    model = get_entry(name).name
    first = manifests[0]
    for m in manifests:
        if m["model"] != model:
            raise ValueError(f"a `zoo embed` folder holds embeddings of {m['model']}, not {model}; evaluate it with that name")
        for key in ("what", "size", "dtype"):
            if m[key] != first[key]:
                raise ValueError(f"the two `zoo embed` folders were embedded with other {key} ({first[key]} and {m[key]}); embed them alike")
    h, w = first["size"]
    dtype = getattr(torch, first["dtype"])
    if compute.size is not None and compute.size != h or compute.dtype is not None and compute.dtype != dtype or h != w:
        raise ValueError(f"the `zoo embed` folder was embedded at {h}x{w} px in {first['dtype']}; "
                         "drop --size and --dtype (the images are then embedded alike) or embed the folder again")
    return first["what"] == "clip", dataclasses.replace(compute, size=h, dtype=dtype)


def labelled_features(name: str, train: str | os.PathLike, val: str | os.PathLike, compute: Compute) -> Features:
    """The embeddings of ``train`` and ``val`` (image folders or ``zoo embed`` folders) under model ``name``."""
    tr, va = eval_data.read_labelled(train), eval_data.read_labelled(val)
    val_labels = eval_data.align(tr, va)
    clip, compute = _space(name, [tr, va], compute)
    net = info = None
    rows = {}
    for key, side in (("train", tr), ("val", va)):
        if side.rows is not None:
            rows[key] = side.rows
            continue
        if net is None:
            net, info = load_vision(name, compute)
        rows[key] = embed_images(net, info, side.paths, compute, clip=clip, desc=f"embed {key}")
    train_blocks = [b for _, b in rows["train"].chunks()] if tr.rows is not None else [rows["train"]]
    val_rows = as_rows(rows["val"][:] if va.rows is not None else rows["val"])
    return Features(tr.classes, train_blocks, torch.tensor(tr.labels), normalized(val_rows), torch.tensor(val_labels))


__all__ = ["Features", "as_rows", "labelled_features"]
