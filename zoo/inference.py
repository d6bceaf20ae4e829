"""Inference helpers: one image or a list of images -> output (and embedding) as numpy arrays."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from zoo.images import ImageError, ImageLike, open_image
from zoo.nets.pe_vit import PEViT


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@torch.inference_mode()
def _run(net: PEViT, x: torch.Tensor, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    p = next(net.parameters())
    embedding = net.embedding(x.to(device or p.device))
    if net.num_classes:  # a classifier head: probabilities over its classes
        return net.head(embedding).float().softmax(dim=-1), embedding
    return embedding, embedding  # no head: the output is the pooled embedding itself


def infer_batch(
    net: PEViT,
    images: Sequence[ImageLike],
    transform: Callable[[Image.Image], torch.Tensor],
    return_embedding: bool = False,
    device: torch.device | str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Run ``images`` (paths or PIL images) as one batch: ``out`` [N, C] or ``(out, embedding [N, W])``.

    Without a classifier head ``out`` is the pooled embedding; with one it is the softmax over classes.
    """
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise TypeError("infer_batch takes a list of images; for one image call infer_image(net, image, ...) or pass [image]")
    if not images:
        raise ValueError("infer_batch needs at least one image")
    x = torch.stack([transform(open_image(im)) for im in images])
    out, embedding = _run(net, x, device)
    return (_numpy(out), _numpy(embedding)) if return_embedding else _numpy(out)


def infer_image(
    net: PEViT,
    image: ImageLike,
    transform: Callable[[Image.Image], torch.Tensor],
    return_embedding: bool = False,
    device: torch.device | str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Run one image (path or PIL image): ``out`` [1, C] or ``(out, embedding [1, W])`` (see ``infer_batch``)."""
    return infer_batch(net, [image], transform, return_embedding=return_embedding, device=device)


__all__ = ["ImageError", "ImageLike", "infer_batch", "infer_image", "open_image"]
