"""The text tower of Meta's PE-Core CLIP models.

Forward pass (Meta's PE text encoder, exactly): token embedding + learned position
embedding -> pre-norm causal blocks (LayerNorm eps 1e-5, fused qkv, exact GELU; the
vision block layout without RoPE) -> ``norm_final`` -> the token at the highest id of
each row (the end-of-text token) -> ``proj`` (no bias) into CLIP space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nets.pe_vit import Linear, Mlp, init_linears_and_norms


@dataclass(frozen=True)
class TextConfig:
    """The text tower of a PE-Core CLIP model (its output width is the vision ``clip_dim``)."""

    width: int
    depth: int
    heads: int
    mlp_dim: int
    context_length: int
    vocab_size: int


class CausalAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        B, N, W = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(B, N, W), residual=residual)


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = CausalAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), residual=x)
        return self.mlp(self.norm2(x), residual=x)


class PEText(nn.Module):
    """PE-Core text encoder: token ids [B, L] (L <= context_length) -> CLIP features [B, out_dim]."""

    def __init__(self, cfg: TextConfig, out_dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"text width {cfg.width} does not split into {cfg.heads} heads")
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(TextBlock(cfg.width, cfg.heads, cfg.mlp_dim, norm_eps) for _ in range(cfg.depth))
        self.norm_final = nn.LayerNorm(cfg.width, eps=norm_eps)
        self.proj = Linear(cfg.width, out_dim, bias=False)
        if self.pos_embed.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random initialisation (pretrained loads overwrite it)."""
        init_linears_and_norms(self)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"expected integer token ids of shape [batch, length], got {tuple(tokens.shape)} {tokens.dtype}; "
                "make them with zoo.get_tokenizer(name)(texts)"
            )
        if not 0 < tokens.shape[1] <= self.context_length:
            raise ValueError(f"token length {tokens.shape[1]} must be in [1, {self.context_length}] (the context length)")

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """All token features after ``norm_final`` [B, L, width]."""
        self._check(tokens)
        x = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features in CLIP space [B, out_dim], taken at each row's end-of-text (highest) id."""
        x = self.forward_tokens(tokens)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.proj(pooled)


__all__ = ["PEText"]
