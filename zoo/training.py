"""Optimizer parameter groups for fine-tuning a PE net: no decay where decay hurts, layer-wise lr decay."""

from __future__ import annotations

from typing import Any

from torch import nn

from zoo.nets.pe_vit import PEViT

_STEM = ("patch_embed.", "cls_token", "pos_embed", "norm_pre.")
_NO_DECAY = ("pos_embed", "cls_token", "attn_pool.probe")


def _layer_id(name: str, depth: int) -> int:
    """0 for the stem, i + 1 for block i, depth + 1 for everything after the blocks (pool, projection, head)."""
    if name.startswith(_STEM):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def _decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay on matrices only: not on biases, norms, layer scales, embeddings, class token, probe."""
    return param.ndim > 1 and name not in _NO_DECAY


def param_groups(net: PEViT, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups as timm and BEiT/MAE build them, for ``torch.optim.AdamW(param_groups(...))``.

    No weight decay on biases, norms, ``pos_embed``, ``cls_token``, the pooling probe and layer scales.
    Layer-wise lr decay: the head (and pool, CLIP projection) gets ``lr``, block ``i`` gets
    ``lr * layer_decay ** (depth - i)``, the patch/position embeddings ``lr * layer_decay ** (depth + 1)``.
    Every trainable parameter is in exactly one group; frozen ones (``requires_grad=False``) in none.
    Each group carries ``lr_scale`` (its lr / ``lr``) for schedulers that rescale it.
    """
    if not isinstance(net, PEViT):
        raise TypeError(f"param_groups expects a zoo PEViT net, got {type(net).__name__}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    depth = len(net.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        layer, decay = _layer_id(name, depth), _decays(name, param)
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(param)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


__all__ = ["param_groups"]
