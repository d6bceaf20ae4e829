"""Preprocessing: ``classification_transform`` reproduces Meta's PE training preprocessing by default."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from zoo.images import to_rgb


def classification_transform(
    size: int | tuple[int, int], rgb_stats: dict[str, list[float]], center_crop: float = 1.0
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalized float tensor [3, H, W].

    Default (``center_crop=1.0``): Meta's training preprocessing, a "squash" resize of the whole image
    to (H, W) with bilinear filtering, scaling to [0, 1] and normalizing with ``rgb_stats``.
    Images are first made upright 8-bit RGB (``zoo.images.to_rgb``: EXIF orientation applied, 16-bit and
    float images scaled, not saturated). With ``center_crop < 1`` the image is resized to (H, W) / center_crop, then center-cropped to (H, W).
    """
    h, w = (size, size) if isinstance(size, int) else size
    if not 0.0 < center_crop <= 1.0:
        raise ValueError(f"center_crop must be in (0, 1], got {center_crop}")
    if center_crop == 1.0:
        resize = [T.Resize((h, w), interpolation=T.InterpolationMode.BILINEAR)]
    else:
        outer = (round(h / center_crop), round(w / center_crop))
        resize = [T.Resize(outer, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop((h, w))]
    return T.Compose([to_rgb, *resize, T.ToTensor(), T.Normalize(rgb_stats["mean"], rgb_stats["std"])])


def pretrained_cfg(size: int | tuple[int, int], rgb_stats: dict[str, list[float]], num_classes: int = 0) -> dict[str, object]:
    """``classification_transform(size, rgb_stats)`` as timm's ``pretrained_cfg``.

    Set on every net the zoo builds (``net.pretrained_cfg``), so ``timm.data.resolve_data_config({}, model=net)``
    and ``timm.data.create_transform(**config)`` give the zoo's preprocessing (for RGB images): a squash
    resize of the whole image, bilinear, no crop, the checkpoint's mean and std.
    """
    h, w = (size, size) if isinstance(size, int) else size
    return {
        "input_size": (3, int(h), int(w)),
        "interpolation": "bilinear",
        "crop_mode": "squash",
        "crop_pct": 1.0,
        "mean": tuple(rgb_stats["mean"]),
        "std": tuple(rgb_stats["std"]),
        "num_classes": int(num_classes),
    }


__all__ = ["classification_transform", "pretrained_cfg", "to_rgb"]
