"""timm as an independent numerical oracle for Meta's PE vision towers (DESIGN.md section 2)."""

from __future__ import annotations

import dataclasses

import timm
import torch
import torch.nn.functional as F
from timm.models.eva import checkpoint_filter_fn

from zoo.nets.pe_vit import PEConfig
from zoo.registry import Entry

_SIZES = {"T": "tiny", "S": "small", "B": "base", "L": "large", "G": "gigantic"}
UNIT_DEPTH = {"S": 6, "B": 4, "L": 2, "G": 1}  # towers cut to this depth in unit tests (T runs at full depth)


def unit_config(entry: Entry) -> PEConfig:
    """The entry's config, at reduced depth for S/B/L/G so unit tests stay fast and lean."""
    cfg = entry.config
    size = entry.variant[0]
    return dataclasses.replace(cfg, depth=UNIT_DEPTH[size]) if size in UNIT_DEPTH else cfg


def timm_name(entry: Entry) -> str:
    c = entry.config
    return f"vit_pe_{entry.family}_{_SIZES[entry.variant[0]]}_patch{c.patch_size}_{c.image_size}"


def timm_model(
    entry: Entry, cfg: PEConfig, meta_vision: dict[str, torch.Tensor], h: int, w: int, lean: bool = False
) -> torch.nn.Module:
    """timm's implementation at (h, w) loaded with Meta-layout weights (position embedding resized like Meta).

    ``lean=True`` (full-size L/G models): built on the meta device and given ``meta_vision``'s own tensors
    (timm's conversion takes views), so no second copy of the weights is made; the RoPE tables, which
    are not part of the weights, come from a one-block twin built on the CPU.
    """
    gh, gw = h // cfg.patch_size, w // cfg.patch_size

    def build(depth: int) -> torch.nn.Module:
        return timm.create_model(
            timm_name(entry), pretrained=False, num_classes=cfg.clip_dim or 0,
            img_size=(h, w), ref_feat_shape=(gh, gw), depth=depth,
        )

    if lean:
        with torch.device("meta"):
            model = build(cfg.depth)
        model.rope = build(1).rope
    else:
        model = build(cfg.depth)
    sd = dict(meta_vision)
    pos, n, G = sd["positional_embedding"], cfg.num_prefix_tokens, cfg.grid
    grid = pos[n:].reshape(1, G, G, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False, antialias=False)
    sd["positional_embedding"] = torch.cat([pos[:n], grid.flatten(2).transpose(1, 2)[0]])
    # contiguous(): copies only the transposed CLIP projection, so the lean model runs the same kernels
    model.load_state_dict({k: v.contiguous() for k, v in checkpoint_filter_fn(sd, model).items()}, assign=lean)
    return model.eval()


@torch.no_grad()
def timm_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """tokens, pooled embedding and (Core) CLIP-projected embedding from timm."""
    tokens = model.forward_features(x)
    out = {"tokens": tokens, "embedding": model.forward_head(tokens, pre_logits=True)}
    if model.num_classes:
        out["clip"] = model.forward_head(tokens)
    return out
