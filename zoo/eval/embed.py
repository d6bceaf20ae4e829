"""Models and embeddings for the evaluations.

Images are decoded as ``zoo embed`` decodes them (``zoo.collection``'s dataset and collate, DataLoader
workers) and embedded by the cached-embedding step of ``zoo finetune --linear-probe``; a ``zoo embed``
folder is read as it is, never embedded again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from zoo.collection.embed import ImageFiles, _collate
from zoo.finetune import _embed
from zoo.images import ImageError
from zoo.loader import ModelInfo, load_pretrained_model
from zoo.nets.pe_vit import PEViT
from zoo.transforms import classification_transform


@dataclass
class Compute:
    """Where and how a net runs, and how images reach it."""

    dtype: torch.dtype | None = None  # default float32 (or the dtype of a zoo embed folder being evaluated)
    device: str | None = None
    batch_size: int = 64
    workers: int | None = None  # default: the CPU count, at most 8 (as zoo embed)
    size: int | None = None  # input side; default the model's (native, or a fine-tuned file's training size)
    weights_dir: str | os.PathLike | None = None
    progress: bool = True

    @property
    def num_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.workers is None else self.workers


class _Batches:
    """``(images, labels)`` batches of a DataLoader over ``zoo.collection``'s ``ImageFiles``; an unreadable
    image stops the evaluation with a one-line error naming it (a skipped image would change the score)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform, compute: Compute) -> None:
        self.paths, self.labels = paths, torch.as_tensor(list(labels), dtype=torch.long)
        self.dataset = ImageFiles(paths, transform)
        workers = compute.num_workers
        self.loader = DataLoader(self.dataset, batch_size=compute.batch_size, num_workers=workers, collate_fn=_collate,
                                 pin_memory=torch.device(compute.device or "cpu").type == "cuda",
                                 prefetch_factor=4 if workers else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        for idx, x, errors in self.loader:
            if errors:
                i, reason = errors[0]
                raise ImageError(f"cannot read {self.paths[i]} ({reason}); fix or remove the file and run again")
            yield x, self.labels[idx], []  # zoo.finetune's batch form: images, labels, reasons for the unreadable


def load_vision(name: str, compute: Compute) -> tuple[PEViT, ModelInfo]:
    """A registry name, ``hf-hub:`` repo or fine-tuned file as an inference net."""
    return load_pretrained_model(name, inference=True, dtype=compute.dtype or torch.float32, device=compute.device, new_size=compute.size,
                                 weights_dir=compute.weights_dir, progress_bar=compute.progress)


def load_clip(name: str, compute: Compute):
    """``(clip, net, info)``: the PE-Core CLIP model of ``name`` whose vision tower is ``name``'s net (a fine-tuned
    file keeps its own tower and takes the text tower of its base checkpoint)."""
    from zoo.clip import load_pretrained_clip

    net, info = load_vision(name, compute)
    if net.clip_proj is None:
        raise ValueError(f"{name} has no CLIP projection and no text tower; zero-shot and retrieval need a PE-Core model")
    clip = load_pretrained_clip(info.name, inference=True, dtype=compute.dtype or torch.float32, device=compute.device,
                                weights_dir=compute.weights_dir, progress_bar=compute.progress)
    clip.visual = net
    return clip, net, info


def embed_images(net: PEViT, info: ModelInfo, paths: Sequence[str], compute: Compute, *, clip: bool = False,
                 desc: str = "embed") -> torch.Tensor:
    """Float32 embeddings [N, D] of ``paths`` with the model's own preprocessing, in input order;
    ``clip=True``: projected into CLIP space (``net.clip_embedding``)."""
    transform = classification_transform(info.size, info.rgb_stats)
    device = torch.device(compute.device or "cpu")
    rows, _ = _embed(net, _Batches(paths, range(len(paths)), transform, compute), device, desc, compute.progress, set())
    if clip:
        with torch.inference_mode():
            p = net.clip_proj.weight
            rows = torch.cat([net.clip_proj(chunk.to(p.device, p.dtype)).float().cpu() for chunk in rows.split(4096)])
    return rows


def normalized(rows: torch.Tensor) -> torch.Tensor:
    return F.normalize(rows.float(), dim=-1)


__all__ = ["Compute", "embed_images", "load_clip", "load_vision", "normalized"]
