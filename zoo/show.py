"""See what the model sees: principal components of the patch tokens, attention maps, text heat maps and
drawn detections.

Every function returns numpy arrays (one map per image, on the patch grid), so results can be tested and
used further; ``overlay`` and ``contact_sheet`` turn them into pictures with Pillow. Images are given as
paths, PIL images or an already preprocessed batch ``[B, 3, H, W]``; paths and PIL images go through the
net's own preprocessing (``net.pretrained_cfg``, set on every net the zoo loads).

The ordinary forward pass is untouched: attention weights are computed here, on request, from each
block's input (captured by a forward pre-hook) with the block's own layers, so a net that is not being
looked at runs its fused attention exactly as before.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zoo.images import ImageLike, open_image
from zoo.nets.pe_vit import PEViT
from zoo.transforms import classification_transform

Images = torch.Tensor | ImageLike | Sequence[ImageLike]


# ------------------------------------------------------------------ inputs
def _transform_of(net: PEViT) -> Callable[[Image.Image], torch.Tensor]:
    cfg = getattr(net, "pretrained_cfg", None)
    if not cfg:
        raise ValueError(
            "this net carries no preprocessing (net.pretrained_cfg): load it with zoo.load_pretrained_model, "
            "or pass a preprocessed batch [B, 3, H, W]"
        )
    _, h, w = cfg["input_size"]
    return classification_transform((h, w), {"mean": list(cfg["mean"]), "std": list(cfg["std"])})


def _batch(net: PEViT, images: Images) -> torch.Tensor:
    """A preprocessed batch on the net's device and dtype."""
    p = net.patch_embed.weight
    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
    else:
        items = [images] if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) else list(images)
        if not items:
            raise ValueError("no images given: pass at least one image path, PIL image or a batch tensor")
        transform = _transform_of(net)
        x = torch.stack([transform(open_image(item)) for item in items])
    return x.to(p.device, p.dtype)


def _layer_index(net: PEViT, layer: int) -> int:
    depth = len(net.blocks)
    if isinstance(layer, bool) or not hasattr(layer, "__index__"):
        raise TypeError(f"layer must be an integer block index, got {type(layer).__name__} {layer!r}")
    i = layer.__index__()
    if not -depth <= i < depth:
        raise ValueError(f"layer {i} is out of range: this model has {depth} blocks, valid indices are [-{depth}, {depth - 1}]")
    return i % depth


# ------------------------------------------------------------ feature PCA
@torch.no_grad()
def patch_tokens(net: PEViT, images: Images, layer: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch tokens ``[B, grid_h * grid_w, W]`` (float32, prefix tokens dropped) and the grid.

    ``layer=None``: the final tokens (after ``ln_post`` where the model has it), as ``forward_features``;
    ``layer=i``: the raw output of block ``i`` (negatives count from the end), as ``detection_features``.
    """
    x = _batch(net, images)
    key = "neck" if layer is None else f"block{_layer_index(net, layer)}"
    fmap = net.detection_features(x, layers=None if layer is None else [layer])[key]
    B, W, gh, gw = fmap.shape
    return fmap.float().flatten(2).transpose(1, 2), (gh, gw)


def _pca(data: torch.Tensor, components: int) -> torch.Tensor:
    """Projections of the rows of ``data`` [N, W] on their first ``components`` principal axes (float64 SVD).

    Each axis is oriented so that its largest loading is positive, which makes the colours deterministic."""
    data = data.double()
    centered = data - data.mean(dim=0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    axes = vh[:components]
    axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    return centered @ axes.T


def feature_pca(
    net: PEViT,
    images: Images,
    layer: int | None = None,
    components: int = 3,
    *,
    mask_background: bool = False,
    scale: bool = True,
) -> list[np.ndarray]:
    """The first ``components`` principal components of the patch tokens, ``[grid_h, grid_w, components]`` per image.

    With several images the PCA is fitted on all their tokens jointly and each component is scaled to
    0-1 over all images together, so a colour means the same thing in every picture. ``scale=False``
    returns the raw projections. ``mask_background=True`` keeps only the patches whose first component
    is positive, with that component oriented so that the patches on the image border are negative on
    average (background is usually at the border); masked patches are 0.
    """
    if not 1 <= components:
        raise ValueError(f"components must be a positive number, got {components}")
    tokens, (gh, gw) = patch_tokens(net, images, layer)
    B, N, W = tokens.shape
    if components > min(B * N, W):
        raise ValueError(f"components={components} exceeds what {B * N} tokens of width {W} can give ({min(B * N, W)})")
    proj = _pca(tokens.reshape(B * N, W), components).reshape(B, gh, gw, components)
    keep = torch.ones(B, gh, gw, dtype=torch.bool)
    if mask_background:
        first = proj[..., 0]
        border = torch.cat([first[:, 0], first[:, -1], first[:, :, 0], first[:, :, -1]], dim=1)
        if border.mean() > 0:
            first = -first
        keep = first > 0
    if scale:
        flat = proj[keep] if keep.any() else proj.reshape(-1, components)
        lo, hi = flat.min(dim=0).values, flat.max(dim=0).values
        proj = (proj - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        proj = proj.clamp(0, 1)
    proj = torch.where(keep[..., None], proj, torch.zeros_like(proj))
    return [p.numpy().astype(np.float32) for p in proj]


# -------------------------------------------------------------- attention
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """2D RoPE with interleaved pairs: (a, b) -> (a cos - b sin, b cos + a sin); ``sin`` holds the signs."""
    pairs = x.unflatten(-1, (-1, 2))
    swapped = torch.stack([pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + swapped * sin


@torch.no_grad()
def attention_weights(net: PEViT, images: Images, layers: Sequence[int] | None = None) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
    """Softmax attention weights ``{block: [B, heads, N, N]}`` (float32) of the requested blocks (default: all),
    over all tokens (prefix first), computed from each block's input with the block's own layers."""
    x = _batch(net, images)
    wanted = sorted({_layer_index(net, i) for i in (range(len(net.blocks)) if layers is None else layers)})
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        net.blocks[i].register_forward_pre_hook(lambda _m, args, i=i: inputs.__setitem__(i, args[0]))
        for i in wanted
    ]
    try:
        net.detection_features(x, layers=[wanted[-1]])  # runs the blocks up to the last one wanted
    finally:
        for h in hooks:
            h.remove()
    gh, gw = x.shape[-2] // net.patch_size, x.shape[-1] // net.patch_size
    out = {}
    for i in wanted:
        blk, t = net.blocks[i], inputs[i]
        B, N, W = t.shape
        heads = blk.attn.heads
        qkv = blk.attn.qkv(blk.norm1(t)).float().view(B, N, 3, heads, W // heads).permute(2, 0, 3, 1, 4)
        cos, sin = net.rope_tables(gh, gw, qkv.device, torch.float32)
        q, k = _rotate(qkv[0], cos, sin), _rotate(qkv[1], cos, sin)
        out[i] = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(W // heads), dim=-1)
    return out, (gh, gw)


def rollout(weights: Sequence[torch.Tensor], prefix: int) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) over blocks in order: heads averaged, the residual added
    as ``0.5 A + 0.5 I``, rows renormalised, the blocks' matrices multiplied. Returns ``[B, patches]``:
    the row of the class token, or the mean of all rows when the model has none."""
    result = None
    for w in weights:
        a = w.mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    rows = result[:, 0] if prefix else result.mean(dim=1)
    return rows[:, prefix:]


@torch.no_grad()
def probe_attention(net: PEViT, images: Images) -> tuple[torch.Tensor, tuple[int, int]]:
    """PE-Core's pooling probe's attention over the patch tokens ``[B, patches]`` (heads averaged)."""
    if net.attn_pool is None:
        raise ValueError("this model has no attention pooling (only PE-Core has a pooling probe); use method='rollout'")
    x = _batch(net, images)
    tokens = net.forward_features(x)
    pool = net.attn_pool
    B, N, W = tokens.shape
    hd = W // pool.heads
    q = pool.q(pool.probe).float().view(1, pool.heads, 1, hd)
    k = pool.kv(tokens).float().view(B, N, 2, pool.heads, hd)[:, :, 0].transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)  # [B, heads, 1, N]
    gh, gw = x.shape[-2] // net.patch_size, x.shape[-1] // net.patch_size
    return weights.mean(dim=1)[:, 0, net.cfg.num_prefix_tokens :], (gh, gw)


def attention(
    net: PEViT, images: Images, layer: int = -1, method: Literal["rollout", "last"] = "rollout"
) -> list[np.ndarray]:
    """An attention map ``[grid_h, grid_w]`` per image.

    ``method="rollout"``: attention rollout through blocks 0..``layer``. ``method="last"``: for PE-Core,
    the pooling probe's attention over the final tokens (what the embedding is made of); for the others,
    block ``layer``'s attention from the class token (or the mean over all queries without one), heads
    averaged. Maps sum the attention each patch receives; the prefix token's share is left out.
    """
    prefix = net.cfg.num_prefix_tokens
    if method == "last" and net.attn_pool is not None:
        maps, (gh, gw) = probe_attention(net, images)
    elif method in ("rollout", "last"):
        idx = _layer_index(net, layer)
        wanted = list(range(idx + 1)) if method == "rollout" else [idx]
        weights, (gh, gw) = attention_weights(net, images, wanted)
        if method == "rollout":
            maps = rollout([weights[i] for i in wanted], prefix)
        else:
            a = weights[idx].mean(dim=1)
            maps = (a[:, 0] if prefix else a.mean(dim=1))[:, prefix:]
    else:
        raise ValueError(f"method must be 'rollout' or 'last', got {method!r}")
    return [m.reshape(gh, gw).numpy().astype(np.float32) for m in maps]


# ---------------------------------------------------------- text heat map
def _text_features(clip_model: torch.nn.Module, text: str) -> torch.Tensor:
    from zoo.clip.tokenizer import Tokenizer

    if not isinstance(text, str) or not text.strip():
        raise ValueError('the text is empty: give the words to look for, e.g. text="a dog"')
    tokenizer = Tokenizer(clip_model.context_length)
    p = clip_model.visual.patch_embed.weight
    with torch.no_grad():
        tokens = tokenizer([text]).to(p.device)
        return F.normalize(clip_model.encode_text(tokens).float(), dim=-1)[0]


def patch_clip_embeddings(net: PEViT, images: Images) -> tuple[torch.Tensor, tuple[int, int]]:
    """Each patch token carried through PE-Core's pooling value path into CLIP space ``[B, patches, clip_dim]``.

    The pooled embedding is ``proj(sum_i a_i v_i)`` for the probe's attention weights ``a`` (which sum
    to 1) and the tokens' value vectors ``v``; since ``proj`` is affine, this equals ``sum_i a_i proj(v_i)``:
    ``proj(v_i)`` is patch i's share in the space the pooling writes. Each share then goes through the
    pool's residual MLP and the CLIP projection as the pooled vector does (the MLP is not linear, so
    this last step is an approximation, the one MaskCLIP makes for CLIP's attention pooling).
    """
    if net.attn_pool is None or net.clip_proj is None:
        raise ValueError("text heat maps need a PE-Core model (attention pooling and a CLIP projection)")
    x = _batch(net, images)
    with torch.no_grad():
        tokens = net.forward_features(x)
        pool = net.attn_pool
        B, N, W = tokens.shape
        v = pool.kv(tokens)[..., W:]
        share = pool.proj(v)
        share = pool.mlp(pool.norm(share), residual=share)
        z = net.clip_proj(share).float()
    gh, gw = x.shape[-2] // net.patch_size, x.shape[-1] // net.patch_size
    return z[:, net.cfg.num_prefix_tokens :], (gh, gw)


def text_heatmap(
    clip_model: torch.nn.Module, images: Images, text: str, method: Literal["value", "gradient"] = "value"
) -> list[np.ndarray]:
    """Where ``text`` is seen, ``[grid_h, grid_w]`` per image, for a PE-Core CLIP model (``zoo.load_pretrained_clip``).

    ``method="value"``: the cosine similarity of the text embedding with each patch's embedding through
    the pooling value path (``patch_clip_embeddings``). ``method="gradient"``: Grad-CAM on the last
    block's patch tokens for the image-text cosine similarity (channel weights are the mean gradient over
    the patches, the map is the ReLU of the weighted sum).
    """
    net = clip_model.visual
    t = _text_features(clip_model, text)
    if method == "value":
        z, (gh, gw) = patch_clip_embeddings(net, images)
        maps = F.normalize(z, dim=-1) @ t.to(z.device)
    elif method == "gradient":
        x = _batch(net, images)
        captured: list[torch.Tensor] = []

        def keep(_m: torch.nn.Module, _args: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            captured.append(out)

        hook = net.blocks[-1].register_forward_hook(keep)
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                score = (F.normalize(net.clip_embedding(x).float(), dim=-1) @ t.to(x.device)).sum()
                score.backward()
        finally:
            hook.remove()
        acts = captured[-1]
        prefix = net.cfg.num_prefix_tokens
        grads, acts = acts.grad[:, prefix:].float(), acts.detach()[:, prefix:].float()
        maps = torch.relu((acts * grads.mean(dim=1, keepdim=True)).sum(dim=-1))
        gh, gw = x.shape[-2] // net.patch_size, x.shape[-1] // net.patch_size
    else:
        raise ValueError(f"method must be 'value' or 'gradient', got {method!r}")
    return [m.reshape(gh, gw).detach().cpu().numpy().astype(np.float32) for m in maps]


# ------------------------------------------------------------- detections
def draw_detections(
    image: ImageLike,
    boxes: torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    masks: torch.Tensor | None = None,
    score_threshold: float = 0.0,
    width: int = 3,
) -> np.ndarray:
    """The image ``[H, W, 3]`` uint8 with boxes (xyxy, in image pixels), labels and scores drawn by
    torchvision's drawing utilities; ``masks`` ([N, 1, H, W] probabilities, as Mask R-CNN returns) are
    blended in at 0.5. Detections scoring below ``score_threshold`` are left out."""
    from torchvision.transforms.functional import pil_to_tensor
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    picture = pil_to_tensor(open_image(image).convert("RGB"))
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    keep = torch.ones(n, dtype=torch.bool)
    if scores is not None:
        scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} boxes: give one score per box")
        keep = scores >= score_threshold
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} boxes: give one label per box")
    text = None
    if labels is not None or scores is not None:
        text = []
        for i in range(n):
            name = ""
            if labels is not None:
                c = int(labels[i])
                name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            text.append(" ".join(s for s in (name, f"{float(scores[i]):.2f}" if scores is not None else "") if s))
    idx = keep.nonzero().flatten().tolist()
    if masks is not None and idx:
        m = torch.as_tensor(masks)[idx].reshape(len(idx), *picture.shape[-2:]) > 0.5
        picture = draw_segmentation_masks(picture, m, alpha=0.5)
    if idx:
        picture = draw_bounding_boxes(
            picture, boxes[idx], labels=[text[i] for i in idx] if text else None, width=width, colors="red"
        )
    return picture.permute(1, 2, 0).numpy()


# -------------------------------------------------------------- pictures
# anchor colours of the heat colour map, from low to high (dark blue, teal, yellow, dark red)
_ANCHORS = np.array([[0.05, 0.05, 0.35], [0.0, 0.55, 0.6], [0.95, 0.9, 0.2], [0.6, 0.0, 0.0]])


def heat_colors(values: np.ndarray) -> np.ndarray:
    """A map of numbers ``[h, w]`` as colours ``[h, w, 3]`` (uint8), scaled to its own min-max."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    pos = v * (len(_ANCHORS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return (255 * rgb).round().astype(np.uint8)


def overlay(image: ImageLike, grid_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The original image beside the map upsampled to it and blended over it (one picture, twice as wide).

    ``grid_map`` is ``[h, w]`` (coloured with ``heat_colors``, upsampled bilinearly), ``[h, w, 3]`` in 0-1
    (a PCA picture, upsampled to sharp patches), or a full ``[H, W, 3]`` uint8 picture (drawn detections)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = open_image(image).convert("RGB")
    m = np.asarray(grid_map)
    if m.ndim == 2:
        layer = Image.fromarray(heat_colors(m)).resize(base.size, Image.BILINEAR)
    elif m.ndim == 3 and m.shape[-1] == 3 and m.dtype == np.uint8:
        layer, alpha = Image.fromarray(m).resize(base.size, Image.BILINEAR), 1.0
    elif m.ndim == 3 and m.shape[-1] == 3:
        layer = Image.fromarray((255 * np.clip(m, 0, 1)).round().astype(np.uint8)).resize(base.size, Image.NEAREST)
    else:
        raise ValueError(f"a map must be [h, w] or [h, w, 3], got shape {m.shape}")
    sheet = Image.new("RGB", (2 * base.width, base.height))
    sheet.paste(base, (0, 0))
    sheet.paste(Image.blend(base, layer, alpha), (base.width, 0))
    return sheet


def contact_sheet(pictures: Sequence[Image.Image], columns: int = 1) -> Image.Image:
    """Pictures in a grid (``columns`` wide, rows as needed), each cell the size of the largest picture."""
    if not pictures:
        raise ValueError("no pictures to put on a contact sheet")
    cw, ch = max(p.width for p in pictures), max(p.height for p in pictures)
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * cw, rows * ch), "white")
    for i, p in enumerate(pictures):
        sheet.paste(p, ((i % columns) * cw, (i // columns) * ch))
    return sheet


__all__ = [
    "attention", "attention_weights", "contact_sheet", "draw_detections", "feature_pca", "heat_colors", "overlay",
    "patch_clip_embeddings", "patch_tokens", "probe_attention", "rollout", "text_heatmap",
]
