"""Seeded random checkpoints in Meta's exact PE layout (key names, shapes, dtypes, nesting).

Real PE weights need the Hub; these stand in for them in the demo, the tests and the
benchmarks. Norms, biases and layer scales are perturbed away from their defaults so
that a wrong mapping cannot hide.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zoo.nets.pe_vit import PEConfig
from zoo.nets.text import TextConfig

Tensor = torch.Tensor


def _block_shapes(prefix: str, width: int, mlp: int, layer_scale: bool) -> Iterator[tuple[str, tuple[int, ...], str]]:
    yield f"{prefix}ln_1.weight", (width,), "norm_w"
    yield f"{prefix}ln_1.bias", (width,), "bias"
    yield f"{prefix}attn.in_proj_weight", (3 * width, width), "linear"
    yield f"{prefix}attn.in_proj_bias", (3 * width,), "bias"
    yield f"{prefix}attn.out_proj.weight", (width, width), "residual"
    yield f"{prefix}attn.out_proj.bias", (width,), "bias"
    if layer_scale:
        yield f"{prefix}ls_1.gamma", (width,), "gamma"
    yield f"{prefix}ln_2.weight", (width,), "norm_w"
    yield f"{prefix}ln_2.bias", (width,), "bias"
    yield f"{prefix}mlp.c_fc.weight", (mlp, width), "linear"
    yield f"{prefix}mlp.c_fc.bias", (mlp,), "bias"
    yield f"{prefix}mlp.c_proj.weight", (width, mlp), "residual"
    yield f"{prefix}mlp.c_proj.bias", (width,), "bias"
    if layer_scale:
        yield f"{prefix}ls_2.gamma", (width,), "gamma"


def vision_shapes(cfg: PEConfig) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(key, shape, kind) of every tensor of a Meta vision tower, in Meta's order."""
    W, P = cfg.width, cfg.patch_size
    yield "conv1.weight", (W, 3, P, P), "linear"
    if cfg.cls_token:
        yield "class_embedding", (W,), "embed"
    yield "positional_embedding", (cfg.num_prefix_tokens + cfg.grid**2, W), "embed"
    yield "ln_pre.weight", (W,), "norm_w"
    yield "ln_pre.bias", (W,), "bias"
    for i in range(cfg.depth):
        yield from _block_shapes(f"transformer.resblocks.{i}.", W, cfg.mlp_dim, cfg.layer_scale)
    if cfg.ln_post:
        yield "ln_post.weight", (W,), "norm_w"
        yield "ln_post.bias", (W,), "bias"
    if cfg.pool == "attn":
        yield "attn_pool.probe", (1, 1, W), "embed"
        yield "attn_pool.attn.in_proj_weight", (3 * W, W), "linear"
        yield "attn_pool.attn.in_proj_bias", (3 * W,), "bias"
        yield "attn_pool.attn.out_proj.weight", (W, W), "linear"
        yield "attn_pool.attn.out_proj.bias", (W,), "bias"
        yield "attn_pool.layernorm.weight", (W,), "norm_w"
        yield "attn_pool.layernorm.bias", (W,), "bias"
        hidden = cfg.pool_mlp_dim or 4 * W
        yield "attn_pool.mlp.c_fc.weight", (hidden, W), "linear"
        yield "attn_pool.mlp.c_fc.bias", (hidden,), "bias"
        yield "attn_pool.mlp.c_proj.weight", (W, hidden), "linear"
        yield "attn_pool.mlp.c_proj.bias", (W,), "bias"
    if cfg.clip_dim:
        yield "proj", (W, cfg.clip_dim), "proj"


def text_shapes(text: TextConfig, out_dim: int) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(key, shape, kind) of every tensor of a Meta PE-Core text tower (top-level keys of a CLIP file)."""
    W = text.width
    yield "token_embedding.weight", (text.vocab_size, W), "embed"
    yield "positional_embedding", (text.context_length, W), "embed"
    for i in range(text.depth):
        yield from _block_shapes(f"transformer.resblocks.{i}.", W, text.mlp_dim, False)
    yield "ln_final.weight", (W,), "norm_w"
    yield "ln_final.bias", (W,), "bias"
    yield "text_projection", (W, out_dim), "proj"
    yield "logit_scale", (), "logit"


def _random(shape: tuple[int, ...], kind: str, gen: torch.Generator) -> Tensor:
    if kind in ("linear", "residual"):  # fan-in scaled so activations stay O(1)
        fan_in = shape[1] if len(shape) == 2 else shape[1] * shape[2] * shape[3]
        scale = 0.5 if kind == "residual" else 1.0  # residual branches grow the stream more slowly
        return scale * torch.randn(shape, generator=gen) / fan_in**0.5
    if kind == "proj":  # Meta's CLIP projections are stored [in, out]
        return torch.randn(shape, generator=gen) / shape[0] ** 0.5
    if kind == "norm_w":
        return 1.0 + 0.2 * torch.randn(shape, generator=gen)
    if kind == "bias":
        return 0.1 * torch.randn(shape, generator=gen)
    if kind == "gamma":
        return 0.1 + 0.05 * torch.randn(shape, generator=gen)
    if kind == "logit":
        return torch.tensor(4.6052)  # log(100), Meta's trained value
    return 0.5 * torch.randn(shape, generator=gen)  # embeddings, probe


def meta_vision_state_dict(cfg: PEConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """A vision-only state dict in Meta's layout with seeded random weights."""
    gen = torch.Generator().manual_seed(seed)
    return {k: _random(s, kind, gen).to(dtype) for k, s, kind in vision_shapes(cfg)}


def meta_clip_state_dict(
    cfg: PEConfig, text: TextConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """A full PE-Core CLIP state dict: vision keys under ``visual.``, the text tower beside them."""
    if not cfg.clip_dim:
        raise ValueError("a CLIP checkpoint needs a vision config with clip_dim (a Core model)")
    sd = {f"visual.{k}": v for k, v in meta_vision_state_dict(cfg, seed, dtype).items()}
    gen = torch.Generator().manual_seed(seed + 1)
    sd.update({k: _random(s, kind, gen).to(dtype) for k, s, kind in text_shapes(text, cfg.clip_dim)})
    return sd


__all__ = ["meta_clip_state_dict", "meta_vision_state_dict", "text_shapes", "vision_shapes"]
