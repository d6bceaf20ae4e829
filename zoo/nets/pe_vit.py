"""The one RoPE-ViT that every Perception Encoder vision checkpoint configures.

Forward pass (Meta's PE, exactly): patchify -> [cls] -> + position embedding
(bilinearly resized at other grids) -> ln_pre -> pre-norm blocks with 2D
interleaved RoPE on q/k -> (Core) ln_post and 8-head attention pooling.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.nets.packing import Linear, set_packing


@dataclass(frozen=True)
class PEConfig:
    """Architecture of one PE vision tower (every knob the family needs)."""

    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    image_size: int  # native (training) resolution, square
    cls_token: bool
    pool: Literal["attn", "avg"]  # attention pooling (Core) or mean of patch tokens
    ln_post: bool
    layer_scale: bool
    clip_dim: int | None = None  # CLIP projection output width (Core only)
    pool_heads: int = 8
    pool_mlp_dim: int | None = None  # defaults to 4 * width
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads or (self.width // self.heads) % 4:
            raise ValueError(f"width {self.width} must split into {self.heads} heads whose size is a multiple of 4")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.pool not in ("attn", "avg"):
            raise ValueError(f"pool must be 'attn' or 'avg', got {self.pool!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cls_token else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown architecture config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# True while ``torch.export`` (and so ``torch.onnx.export``) traces, when sizes may be symbolic (older torch: never).
_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
_ROPE_CACHE_SIZE = 8  # RoPE tables kept per net (grid, device, dtype): a few input sizes in turn


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (a, b) -> (a cos - b sin, b cos + a sin); ``sin`` carries the signs."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


@torch.no_grad()
def init_linears_and_norms(module: nn.Module) -> None:
    """Random init shared by the towers: truncated-normal linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, N, W = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _apply_rope(qkv[:2], *rope)  # q and k rotated in one pass
        out = F.scaled_dot_product_attention(q, k, qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, N, W), residual=residual)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.fc2 = Linear(hidden, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc2(self.fc1(x, gelu=True), residual=residual)


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth: zero each sample's ``x`` with probability ``rate``, scale the kept ones by 1/(1-rate)."""
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class Block(nn.Module):
    def __init__(self, cfg: PEConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.ls1 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim)
        self.ls2 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.drop_path = drop_path_rate  # on both residual branches, in training mode only

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.training and self.drop_path > 0:
            x = x + drop_path(self.ls1(self.attn(self.norm1(x), rope)), self.drop_path)
            return x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path)
        if isinstance(self.ls1, LayerScale):
            x = torch.addcmul(x, self.attn(self.norm1(x), rope), self.ls1.gamma)
            return torch.addcmul(x, self.mlp(self.norm2(x)), self.ls2.gamma)
        x = self.attn(self.norm1(x), rope, residual=x)  # residual adds fused into the output projections
        return self.mlp(self.norm2(x), residual=x)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path:g}" if self.drop_path else ""


class AttentionPool(nn.Module):
    """A learned probe attends over all tokens, then ``x + mlp(norm(x))``."""

    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.q = Linear(width, width)
        self.kv = Linear(width, 2 * width)
        self.proj = Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        hd = W // self.heads
        q = self.q(self.probe).view(1, self.heads, 1, hd).expand(B, -1, -1, -1)
        k, v = self.kv(x).view(B, N, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = self.proj(F.scaled_dot_product_attention(q, k, v).reshape(B, W))
        return self.mlp(self.norm(out), residual=out)


class PEViT(nn.Module):
    """Perception Encoder vision tower (Core, Spatial and Lang variants).

    ``drop_path_rate``: stochastic depth on both residual branches of every block, rising linearly
    from 0 at the first block to ``drop_path_rate`` at the last, in training mode only.
    """

    def __init__(self, cfg: PEConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.cfg = cfg
        W = cfg.width
        self.patch_size = cfg.patch_size
        self.embed_dim = W
        self.patch_embed = nn.Conv2d(3, W, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(W)) if cfg.cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(cfg.num_prefix_tokens + cfg.grid**2, W))
        self.norm_pre = nn.LayerNorm(W, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(cfg, drop_path_rate * i / max(cfg.depth - 1, 1)) for i in range(cfg.depth)
        )
        self.norm_post = nn.LayerNorm(W, eps=cfg.norm_eps) if cfg.ln_post else nn.Identity()
        self.attn_pool = (
            AttentionPool(W, cfg.pool_heads, cfg.pool_mlp_dim or 4 * W, cfg.norm_eps) if cfg.pool == "attn" else None
        )
        self.clip_proj = Linear(W, cfg.clip_dim, bias=False) if cfg.clip_dim else None
        self.head: nn.Module = nn.Identity()
        self.num_classes = 0
        self.grad_checkpointing = False
        self._frozen: tuple[str, ...] = ()  # submodules kept frozen and in eval mode by freeze()
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.patch_embed.weight.device.type != "meta":
            self.init_weights()

    # ----------------------------------------------------------------- setup
    @torch.no_grad()
    def init_weights(self) -> None:
        """Random initialisation (for training from scratch; pretrained loads overwrite it)."""
        init_linears_and_norms(self)
        for m in self.modules():
            if isinstance(m, LayerScale):
                m.gamma.fill_(0.1)
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.probe, std=0.02)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head: a linear layer over ``embedding`` (identity for 0 classes)."""
        num_classes = _index(num_classes, "num_classes")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no head), got {num_classes}")
        p = self.patch_embed.weight
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, device=p.device, dtype=p.dtype) if num_classes else nn.Identity()

    def backbone_parameters(self) -> int:
        """Parameter count of the vision tower, without the CLIP projection and head."""
        skip = {id(p) for m in (self.clip_proj, self.head) if m is not None for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # ----------------------------------------------------------- fine-tuning
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = bool(enable)

    def freeze(self, blocks: int | None = None) -> None:
        """Freeze part of the net: no gradients, and eval behaviour (no drop path) even in ``train()``.

        ``blocks=None``: everything but the head (a linear probe). ``blocks=k``: the stem (patch and
        position embeddings, class token, ``norm_pre``) and the first ``k`` blocks. Each call sets the
        frozen part anew (what an earlier call froze is trainable again unless frozen now).
        """
        depth = len(self.blocks)
        if blocks is not None:
            blocks = _index(blocks, "blocks")
            if not 0 <= blocks <= depth:
                raise ValueError(f"blocks must be in [0, {depth}] (this model has {depth} blocks), got {blocks}")
        self.requires_grad_(True)
        if blocks is None:
            names = tuple(n for n, _ in self.named_children() if n != "head")
            params = [p for n, p in self.named_parameters() if not n.startswith("head.")]
        else:
            names = ("patch_embed", "norm_pre", *(f"blocks.{i}" for i in range(blocks)))
            stem = [p for p in (self.cls_token, self.pos_embed) if p is not None]
            params = stem + [p for n in names for p in self.get_submodule(n).parameters()]
        for p in params:
            p.requires_grad_(False)
        self._frozen = names
        self.train(self.training)

    def train(self, mode: bool = True) -> "PEViT":
        super().train(mode)
        for name in self._frozen:
            self.get_submodule(name).train(False)
        return self

    # ------------------------------------------------------------- geometry
    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D image batch [B, 3, H, W], got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 (RGB) channels, got {x.shape[1]} in input of shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        P = self.patch_size
        if h % P or w % P or h == 0 or w == 0:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of the patch size {P}; resize to e.g. "
                f"{max(P, round(h / P) * P)}x{max(P, round(w / P) * P)}"
            )
        return h // P, w // P

    def rope_tables(self, gh: int, gw: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables [N, head_dim] (one value per channel, pairs interleaved) for a
        (gh, gw) grid. Kept for the last few grids, devices and dtypes used, always as normal tensors
        (never inference tensors, so a later training step can use them); computed inside the graph,
        uncached, while compiling or exporting (where the grid may be symbolic)."""
        if torch.compiler.is_compiling() or _exporting():
            return self._rope(gh, gw, device, dtype)
        key = (gh, gw, device, dtype)
        tables = self._rope_cache.pop(key, None)
        if tables is None:
            with torch.inference_mode(False), torch.no_grad():
                tables = self._rope(gh, gw, device, dtype)
            while len(self._rope_cache) >= _ROPE_CACHE_SIZE:
                del self._rope_cache[next(iter(self._rope_cache))]  # the least recently used
        self._rope_cache[key] = tables
        return tables

    def _rope(self, gh: int, gw: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.embed_dim // self.cfg.heads
        quarter = hd // 4
        freqs = self.cfg.rope_theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        off = self.cfg.num_prefix_tokens
        pos = torch.stack([xs.flatten(), ys.flatten()], dim=1).to(torch.float64) + off
        if off:
            pos = torch.cat([torch.zeros(1, 2, dtype=torch.float64), pos])
        angles = torch.cat([pos[:, :1] * freqs, pos[:, 1:] * freqs], dim=1)  # x angles, then y angles
        cos = angles.cos().repeat_interleave(2, dim=1)
        sin = torch.stack([-angles.sin(), angles.sin()], dim=-1).flatten(1)  # (a, b) -> (-b sin, a sin)
        return cos.to(device, dtype), sin.to(device, dtype)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        G = self.cfg.grid
        if not _exporting() and (gh, gw) == (G, G):  # exported graphs always resample (exact at G x G)
            return self.pos_embed
        prefix, grid = self.pos_embed[: self.cfg.num_prefix_tokens], self.pos_embed[self.cfg.num_prefix_tokens :]
        grid = grid.reshape(1, G, G, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False, antialias=False)
        return torch.cat([prefix, grid.flatten(2).transpose(1, 2)[0]])

    # --------------------------------------------------------------- forward
    def _tokens(self, x: torch.Tensor, layers: set[int] | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
        gh, gw = self._grid(x)
        x = self.patch_embed(x.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = self.norm_pre(x + self._pos_embed(gh, gw).to(x.dtype))
        rope = self.rope_tables(gh, gw, x.device, x.dtype)
        taps: dict[int, torch.Tensor] = {}
        last = max(layers) if layers else len(self.blocks) - 1
        for i, blk in enumerate(self.blocks[: last + 1]):
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(blk, x, rope, use_reentrant=False)
            else:
                x = blk(x, rope)
            if layers and i in layers:
                taps[i] = x
        return x, taps, (gh, gw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens [B, N, W] after the last block (and ln_post where the model has it)."""
        return self.norm_post(self._tokens(x)[0])

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool final tokens into [B, W]: attention pool (Core) or mean of patch tokens."""
        if self.attn_pool is not None:
            return self.attn_pool(tokens)
        return tokens[:, self.cfg.num_prefix_tokens :].mean(dim=1)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, W], before any CLIP projection."""
        return self.pool(self.forward_features(x))

    def clip_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding projected into CLIP space [B, clip_dim] (Core models only)."""
        if self.clip_proj is None:
            raise ValueError("this model has no CLIP projection (only PE-Core checkpoints have one); use embedding()")
        return self.clip_proj(self.embedding(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier head over ``embedding(x)``; the embedding itself while there is no head."""
        return self.head(self.embedding(x))

    def _to_map(self, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        return tokens[:, self.cfg.num_prefix_tokens :].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], gh, gw)

    def detection_features(self, x: torch.Tensor, layers: int | Iterable[int] | None = None) -> dict[str, torch.Tensor]:
        """Dense feature maps [B, W, H/P, W/P].

        Without ``layers``: ``{"neck": ...}`` from the final tokens (as ``forward_features``).
        With ``layers`` (a block index or a sequence of them, numpy and torch integers too; negatives
        count from the end): ``{"block{i}": ...}``, the raw output of each requested block; only the
        blocks needed are run.
        """
        if layers is None:
            tokens, _, (gh, gw) = self._tokens(x)
            return {"neck": self._to_map(self.norm_post(tokens), gh, gw)}
        depth = len(self.blocks)
        if not isinstance(layers, bool) and hasattr(layers, "__index__") and getattr(layers, "ndim", 0) == 0:
            layers = [layers]  # one index: an int, a numpy or torch integer
        elif isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise TypeError(f"layers must be a block index or a sequence of them, got {type(layers).__name__} {layers!r}")
        wanted = []
        for i in layers:
            i = _index(i, "each layer")
            if not -depth <= i < depth:
                raise ValueError(f"layer {i} is out of range: this model has {depth} blocks, valid indices are [-{depth}, {depth - 1}]")
            wanted.append(i % depth)
        if not wanted:
            raise ValueError(f"layers must name at least one block index in [-{depth}, {depth - 1}]")
        _, taps, (gh, gw) = self._tokens(x, set(wanted))
        return {f"block{i}": self._to_map(taps[i], gh, gw) for i in wanted}


def _index(value: Any, what: str) -> int:
    """An integral number (int, numpy integer, integral float refused) as an int, else a TypeError."""
    try:
        if not isinstance(value, bool):
            return value.__index__()
    except (AttributeError, TypeError, ValueError, RuntimeError):  # RuntimeError: a torch tensor of several values
        pass
    raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")


__all__ = ["PEConfig", "PEViT", "set_packing"]
