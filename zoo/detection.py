"""PE as a detection backbone: the ViTDet simple feature pyramid and torchvision's Faster/Mask R-CNN over it.

The pyramid (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object Detection",
arXiv 2203.16527) takes one block's output map at stride 16 and builds the other levels from it alone:
transposed convolutions up (stride 8, 4), the map itself (16), max-pooling down (32), each followed by a
1x1 and a 3x3 convolution with a channel LayerNorm.

Patch 14: torchvision's ``MultiScaleRoIAlign`` and anchor generators take each level's stride to be a power
of two inferred from the map and image sizes, so a stride-14 map would be read as stride 16 and every box
would pool features from the wrong place. The pyramid therefore runs a patch-14 backbone on the input
resized by 14/16: each token then covers exactly 16x16 input pixels, and every level has an exact
power-of-two stride for every PE model.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nets.pe_vit import PEViT, _index

BASE_STRIDE = 16  # the stride of the backbone's map in input pixels, for patch 16 and (resized) patch 14 alike


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map (ViTDet's "LN" after each convolution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def _rescale(width: int, scale: float) -> tuple[nn.Module, int]:
    """The resampling part of one level: (module, output channels) for a power-of-two ``scale``."""
    k = round(math.log2(scale))
    if k > 0:  # transposed 2x2 convolutions, halving the channels each time, LN + GELU between them
        layers: list[nn.Module] = []
        dim = width
        for i in range(k):
            if i:
                layers += [LayerNorm2d(dim), nn.GELU()]
            layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
            dim //= 2
        return nn.Sequential(*layers), dim
    if k < 0:  # ceil_mode: cell i of a level of stride s covers input pixels [s*i, s*(i+1)), also at the border
        return nn.Sequential(*[nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True) for _ in range(-k)]), width
    return nn.Identity(), width


class FeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid over one block of a PE net.

    Returns an ``OrderedDict`` of maps with ``out_channels`` channels, keyed ``"0"``, ``"1"``, ... in the
    order of ``scales`` (relative to the stride-16 backbone map; the default gives strides 4, 8, 16 and
    32), plus ``"pool"`` (stride 2x the last level, torchvision's ``LastLevelMaxPool``) with
    ``top_pool=True``. Input sides must be multiples of 16; non-square inputs work. ``strides`` lists
    each level's stride in input pixels, exact for every PE model (patch-14 backbones run on the input
    resized by 14/16). The net's parts the pyramid never uses (later blocks, ``norm_post``, pooling,
    CLIP projection, head) are frozen so that optimizers skip them.
    """

    def __init__(
        self,
        net: PEViT,
        out_channels: int = 256,
        layer: int = -1,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_pool: bool = False,
    ) -> None:
        super().__init__()
        depth = len(net.blocks)
        layer = _index(layer, "layer")  # numpy and 0-d torch integers too
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer!r} is out of range: this model has {depth} blocks, valid indices are [-{depth}, {depth - 1}]")
        if not scales:
            raise ValueError("scales must name at least one level, e.g. (4.0, 2.0, 1.0, 0.5)")
        for s in scales:
            if not (isinstance(s, (int, float)) and s > 0 and 2.0 ** round(math.log2(s)) == s and BASE_STRIDE / s >= 1):
                raise ValueError(f"scale {s!r} must be a power of two between 1/{2 ** 10} and {BASE_STRIDE}, e.g. 4.0, 2.0, 1.0, 0.5")
        if len(set(scales)) != len(scales):
            raise ValueError(f"scales {tuple(scales)} repeat a level")
        self.net = net
        self.layer = layer % depth
        self.out_channels = out_channels  # what torchvision's detectors read
        self.top_pool = top_pool
        self.strides = tuple(round(BASE_STRIDE / s) for s in scales) + ((round(2 * BASE_STRIDE / scales[-1]),) if top_pool else ())
        device = net.patch_embed.weight.device
        W = net.embed_dim
        levels = []
        for s in scales:
            rescale, dim = _rescale(W, s)
            levels.append(nn.Sequential(
                rescale,
                nn.Conv2d(dim, out_channels, kernel_size=1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ))
        self.levels = nn.ModuleList(levels).to(device)
        for module in (*net.blocks[self.layer + 1:], net.norm_post, net.attn_pool, net.clip_proj, net.head):
            if module is not None:
                module.requires_grad_(False)

    @property
    def max_stride(self) -> int:
        """The coarsest level's stride: input sides that are multiples of it give every level whole cells."""
        return max(self.strides)

    def backbone_map(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen block's output as a [B, W, H/16, W/16] map at stride 16 for every patch size."""
        h, w = x.shape[-2:]
        if x.dim() != 4 or h % BASE_STRIDE or w % BASE_STRIDE:
            raise ValueError(
                f"the feature pyramid needs a [B, 3, H, W] batch with sides that are multiples of {BASE_STRIDE}, "
                f"got shape {tuple(x.shape)}; pad or resize it (detectors: size_divisible={BASE_STRIDE * 2} or more)"
            )
        P = self.net.patch_size
        if P != BASE_STRIDE:  # each token then covers exactly 16x16 input pixels
            x = F.interpolate(x, size=(h * P // BASE_STRIDE, w * P // BASE_STRIDE), mode="bilinear", align_corners=False, antialias=True)
        return next(iter(self.net.detection_features(x, layers=[self.layer]).values()))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        fmap = self.backbone_map(x)
        fmap = fmap.to(self.levels[0][1].weight.dtype)
        out: OrderedDict[str, torch.Tensor] = OrderedDict((str(i), level(fmap)) for i, level in enumerate(self.levels))
        if self.top_pool:
            out["pool"] = F.max_pool2d(out[str(len(self.levels) - 1)], kernel_size=1, stride=2)
        return out


def _detector_kwargs(pyramid: FeaturePyramid, stats: dict[str, list[float]], kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("image_mean", list(stats["mean"]))
    kwargs.setdefault("image_std", list(stats["std"]))
    divisible = kwargs.setdefault("size_divisible", pyramid.max_stride)
    if divisible % pyramid.max_stride:
        raise ValueError(f"size_divisible={divisible} must be a multiple of the pyramid's coarsest stride {pyramid.max_stride}")
    return kwargs


def _detector(detector: type, name: str, num_classes: int, pretrained: bool, weights_dir: str | os.PathLike | None,
              freeze_blocks: int | None, drop_path_rate: float, kwargs: dict[str, Any]) -> Any:
    """``detector`` (a torchvision class) over the PE net ``name`` and its pyramid, normalized with the checkpoint's statistics."""
    if pretrained:
        from zoo.loader import load_pretrained_model

        net, info = load_pretrained_model(name, weights_dir=weights_dir, drop_path_rate=drop_path_rate)
        stats = info.rgb_stats
    else:
        from zoo.models import create_model
        from zoo.registry import get_entry

        stats = get_entry(name).rgb_stats  # Meta's training statistics travel with the registry entry
        net = create_model(name, drop_path_rate=drop_path_rate)
    if freeze_blocks is not None:
        net.freeze(blocks=freeze_blocks)
    pyramid = FeaturePyramid(net, top_pool=True)
    return detector(pyramid, num_classes=num_classes, **_detector_kwargs(pyramid, stats, kwargs))


def faster_rcnn(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights_dir: str | os.PathLike | None = None,
    freeze_blocks: int | None = None,
    drop_path_rate: float = 0.0,
    **torchvision_kwargs: Any,
) -> "torchvision.models.detection.FasterRCNN":  # noqa: F821
    """torchvision's Faster R-CNN over a PE net (registry ``name``) and its ``FeaturePyramid``.

    ``num_classes`` counts the background. ``pretrained=False``: random weights, no Hub access.
    ``freeze_blocks=k``: the stem and the first k blocks stay frozen (``net.freeze``). Images are
    normalized with the checkpoint's own statistics and padded to a multiple of the coarsest stride
    (64, the RPN's extra level), so every level's stride is exact. ``torchvision_kwargs`` go to
    ``FasterRCNN`` (e.g. ``min_size``, ``max_size``, ``box_detections_per_img``).
    """
    from torchvision.models.detection import FasterRCNN

    return _detector(FasterRCNN, name, num_classes, pretrained, weights_dir, freeze_blocks, drop_path_rate, torchvision_kwargs)


def mask_rcnn(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights_dir: str | os.PathLike | None = None,
    freeze_blocks: int | None = None,
    drop_path_rate: float = 0.0,
    **torchvision_kwargs: Any,
) -> "torchvision.models.detection.MaskRCNN":  # noqa: F821
    """torchvision's Mask R-CNN over a PE net and its ``FeaturePyramid`` (options as ``faster_rcnn``)."""
    from torchvision.models.detection import MaskRCNN

    return _detector(MaskRCNN, name, num_classes, pretrained, weights_dir, freeze_blocks, drop_path_rate, torchvision_kwargs)


__all__ = ["BASE_STRIDE", "FeaturePyramid", "LayerNorm2d", "faster_rcnn", "mask_rcnn"]
