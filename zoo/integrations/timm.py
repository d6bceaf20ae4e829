"""``to_timm`` / ``from_timm``: a zoo PE vision net as timm's own PE model (``timm.models.eva``) and back.

The two hold the same tensors under other names (timm: ``patch_embed.proj``, ``gamma_1``, ``norm``,
``attn_pool.latent``, batched class token and position embedding); the position embedding is resized
to the net's current grid exactly as the zoo does at run time (bilinear, no antialias), and timm's RoPE
is built on that grid (``ref_feat_shape``), so timm computes what Meta's model computes at that size.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import torch.nn.functional as F

from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.registry import Entry, load_registry
from zoo.transforms import pretrained_cfg

_SIZES = {"T": "tiny", "S": "small", "B": "base", "L": "large", "G": "gigantic"}
_LETTERS = {v: k for k, v in _SIZES.items()}
_ARCH = re.compile(r"vit_pe_(core|spatial|lang)_(tiny|small|base|large|gigantic)_patch(\d+)_(\d+)")
_GAMMA = re.compile(r"blocks\.(\d+)\.ls([12])\.gamma")
_TIMM_GAMMA = re.compile(r"blocks\.(\d+)\.gamma_([12])")


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError('zoo.to_timm / zoo.from_timm need timm: pip install "pe-zoo[timm]"') from None
    return timm


def timm_architecture(entry: Entry) -> str:
    """timm's model name for a registry entry, e.g. ``vit_pe_core_large_patch14_336``."""
    c = entry.config
    return f"vit_pe_{entry.family}_{_SIZES[entry.variant[0]]}_patch{c.patch_size}_{c.image_size}"


def entry_of(cfg: PEConfig) -> Entry:
    """The registry entry whose architecture ``cfg`` is (its depth may be cut; the full-depth match wins)."""
    same = [e for e in load_registry().values() if dataclasses.replace(e.config, depth=cfg.depth) == cfg]
    if not same:
        raise ValueError("this net's architecture matches no PE checkpoint of the registry; timm serves only PE's shapes")
    return next((e for e in same if e.config.depth == cfg.depth), same[0])


def current_size(net: PEViT) -> tuple[int, int]:
    """The input size the net is set up for: ``pretrained_cfg``'s, else the native size."""
    cfg = getattr(net, "pretrained_cfg", None)
    if cfg and "input_size" in cfg:
        return int(cfg["input_size"][1]), int(cfg["input_size"][2])
    return net.cfg.image_size, net.cfg.image_size


def resize_pos_embed(pos: torch.Tensor, prefix: int, grid: int, to: tuple[int, int]) -> torch.Tensor:
    """A ``[prefix + grid*grid, W]`` position table resized to a ``to`` grid as the zoo net does it at run time."""
    if to == (grid, grid):
        return pos
    patches = pos[prefix:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=to, mode="bilinear", align_corners=False, antialias=False).to(pos.dtype)
    return torch.cat([pos[:prefix], patches.flatten(2).transpose(1, 2)[0]])


def timm_state_dict(net: PEViT, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The net's tensors under timm's names at input ``size`` (head: the classifier, else the CLIP projection)."""
    cfg = net.cfg
    P, n = cfg.patch_size, cfg.num_prefix_tokens
    out: dict[str, torch.Tensor] = {}
    for k, v in net.state_dict().items():
        v = v.detach()
        if k == "cls_token":
            out[k] = v.reshape(1, 1, -1)
        elif k == "pos_embed":
            out[k] = resize_pos_embed(v, n, cfg.grid, (size[0] // P, size[1] // P)).unsqueeze(0)
        elif k == "patch_embed.weight":
            out["patch_embed.proj.weight"] = v
        elif k.startswith("norm_post."):
            out["norm." + k.split(".", 1)[1]] = v
        elif k == "attn_pool.probe":
            out["attn_pool.latent"] = v
        elif m := _GAMMA.fullmatch(k):
            out[f"blocks.{m.group(1)}.gamma_{m.group(2)}"] = v
        elif k == "clip_proj.weight":
            if not net.num_classes:  # timm has one head: the CLIP projection when there is no classifier
                out["head.weight"], out["head.bias"] = v, torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        else:
            out[k] = v
    return out


def to_timm(net: PEViT) -> torch.nn.Module:
    """timm's own PE model holding ``net``'s weights, at the net's current input size.

    ``forward_features`` equals the net's; ``forward`` gives the classifier head's logits when the net has a
    head, the CLIP embedding for PE-Core without one (timm's convention), the pooled embedding otherwise.
    The model's ``pretrained_cfg`` carries the zoo's preprocessing, so timm's data config reproduces it.
    """
    timm = _timm()
    cfg = net.cfg
    entry = entry_of(cfg)
    h, w = current_size(net)
    P = cfg.patch_size
    num_classes = net.num_classes or cfg.clip_dim or 0
    p = net.patch_embed.weight
    with torch.device("meta"):
        model = timm.create_model(
            timm_architecture(entry), pretrained=False, num_classes=num_classes, img_size=(h, w),
            ref_feat_shape=(h // P, w // P), depth=cfg.depth,
        )
    state = timm_state_dict(net, (h, w))
    rope = timm.create_model(timm_architecture(entry), pretrained=False, img_size=(h, w), ref_feat_shape=(h // P, w // P), depth=1).rope
    model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    model.rope = rope  # RoPE tables are buffers computed from the grid, not weights
    model = model.to(device=p.device, dtype=p.dtype)
    stats = {"mean": list(getattr(net, "pretrained_cfg", {}).get("mean", entry.rgb_stats["mean"])),
             "std": list(getattr(net, "pretrained_cfg", {}).get("std", entry.rgb_stats["std"]))}
    model.pretrained_cfg = {**model.pretrained_cfg, **pretrained_cfg((h, w), stats, num_classes)}
    return model.train(net.training)


def from_timm(model: torch.nn.Module) -> PEViT:
    """A zoo net holding the weights of timm's PE model ``model`` (built by ``timm.create_model("vit_pe_...")``).

    At the model's size: a model built at another square size than the checkpoint's gives a net whose
    native size is that size (its position table is the model's). The head comes back as the CLIP
    projection (PE-Core, a bias-free head of the CLIP width) or as a classifier head.
    """
    arch = str(getattr(model, "pretrained_cfg", {}).get("architecture", ""))
    m = _ARCH.fullmatch(arch)
    if m is None:
        raise ValueError(f"from_timm takes timm's PE models (vit_pe_core/spatial/lang_*), got architecture {arch!r}")
    family, size_name, patch = m.group(1), m.group(2), int(m.group(3))
    entry = next(e for e in load_registry().values() if e.family == family and e.variant == f"{_LETTERS[size_name]}{patch}")
    gh, gw = model.patch_embed.grid_size
    ref = getattr(model.rope, "ref_feat_shape", None) if getattr(model, "rope", None) is not None else None
    if ref is not None and tuple(ref) != (gh, gw):
        raise ValueError(
            f"this timm model's RoPE is scaled from a {tuple(ref)} grid to its {gh}x{gw} grid, unlike Meta's PE; "
            f"build it with ref_feat_shape=({gh}, {gw})"
        )
    if gh != gw and (gh, gw) != (entry.config.grid,) * 2:
        raise ValueError(f"from_timm needs a square grid (or the native one), got {gh}x{gw}; build the timm model at a square size")
    head = model.head if isinstance(model.head, torch.nn.Linear) else None
    clip = head is not None and entry.config.clip_dim == head.out_features and not head.bias.detach().any()
    cfg = dataclasses.replace(
        entry.config, depth=len(model.blocks), image_size=gh * patch, clip_dim=entry.config.clip_dim if clip else None,
    )
    state: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        if k == "cls_token":
            state[k] = v.reshape(-1)
        elif k == "pos_embed":
            state[k] = v[0]
        elif k == "patch_embed.proj.weight":
            state["patch_embed.weight"] = v
        elif k.startswith("norm.") and cfg.ln_post:
            state["norm_post." + k.split(".", 1)[1]] = v
        elif k == "attn_pool.latent":
            state["attn_pool.probe"] = v
        elif mm := _TIMM_GAMMA.fullmatch(k):
            state[f"blocks.{mm.group(1)}.ls{mm.group(2)}.gamma"] = v
        elif k.startswith("head."):
            if clip and k == "head.weight":
                state["clip_proj.weight"] = v
            elif not clip:
                state[k] = v
        elif k.startswith("rope."):
            continue
        else:
            state[k] = v
    p = model.patch_embed.proj.weight
    with torch.device("meta"):
        net = PEViT(cfg)
    if head is not None and not clip:
        net.reset_classifier(head.out_features)
    net.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    net = net.to(device=p.device, dtype=p.dtype)
    data = getattr(model, "pretrained_cfg", {})
    stats = {"mean": list(data.get("mean", entry.rgb_stats["mean"])), "std": list(data.get("std", entry.rgb_stats["std"]))}
    net.pretrained_cfg = pretrained_cfg((gh * patch, gw * patch), stats, net.num_classes)
    return net.train(model.training)


__all__ = ["current_size", "entry_of", "from_timm", "timm_architecture", "to_timm"]
