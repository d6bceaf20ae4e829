"""Meta's PE checkpoint layout -> the zoo's state-dict layout.

The zoo keeps readable names and Meta's fused qkv:

| Meta (after ``visual.``)                     | zoo                                  |
|----------------------------------------------|--------------------------------------|
| ``conv1.weight``                             | ``patch_embed.weight``               |
| ``class_embedding``                          | ``cls_token``                        |
| ``positional_embedding``                     | ``pos_embed``                        |
| ``ln_pre.*`` / ``ln_post.*``                 | ``norm_pre.*`` / ``norm_post.*``     |
| ``transformer.resblocks.{i}.ln_1/ln_2.*``    | ``blocks.{i}.norm1/norm2.*``         |
| ``...attn.in_proj_{weight,bias}``            | ``blocks.{i}.attn.qkv.*``            |
| ``...attn.out_proj.*``                       | ``blocks.{i}.attn.proj.*``           |
| ``...mlp.c_fc/c_proj.*``                     | ``blocks.{i}.mlp.fc1/fc2.*``         |
| ``...ls_1/ls_2.gamma``                       | ``blocks.{i}.ls1/ls2.gamma``         |
| ``attn_pool.probe``                          | ``attn_pool.probe``                  |
| ``attn_pool.attn.in_proj_*`` (q; k,v rows)   | ``attn_pool.q.*`` + ``attn_pool.kv.*`` |
| ``attn_pool.attn.out_proj.*``                | ``attn_pool.proj.*``                 |
| ``attn_pool.layernorm.*``                    | ``attn_pool.norm.*``                 |
| ``attn_pool.mlp.c_fc/c_proj.*``              | ``attn_pool.mlp.fc1/fc2.*``          |
| ``proj`` [W, out]                            | ``clip_proj.weight`` [out, W] (transposed) |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from zoo.nets.pe_vit import PEConfig, PEViT

Tensor = torch.Tensor
Transform = Callable[[Tensor], Tensor]

# Keys of a CLIP file's text tower, dropped from the vision conversion.
TEXT_KEY = re.compile(
    r"^(token_embedding\.weight|positional_embedding|text_projection|logit_scale|attn_mask|ln_final\.(weight|bias)"
    r"|transformer\.resblocks\.\d+\..+)$"
)
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.out_proj": "attn.proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP = {
    "conv1.weight": "patch_embed.weight",
    "class_embedding": "cls_token",
    "positional_embedding": "pos_embed",
    "attn_pool.probe": "attn_pool.probe",
}
_TOP_PREFIX = {
    "ln_pre.": "norm_pre.",
    "ln_post.": "norm_post.",
    "attn_pool.attn.out_proj.": "attn_pool.proj.",
    "attn_pool.layernorm.": "attn_pool.norm.",
    "attn_pool.mlp.c_fc.": "attn_pool.mlp.fc1.",
    "attn_pool.mlp.c_proj.": "attn_pool.mlp.fc2.",
}


class ConversionError(ValueError):
    """A source checkpoint does not fit the requested architecture."""


def _same(t: Tensor) -> Tensor:
    return t


def _transpose(t: Tensor) -> Tensor:
    return t.t()


def _rows(start: int, stop: int | None) -> Transform:
    return lambda t: t[start:stop]


def map_vision_key(key: str, width: int) -> list[tuple[str, Transform]] | None:
    """Zoo key(s) and transform(s) for one Meta vision key (``visual.`` already stripped); None if unknown."""
    if key in _TOP:
        return [(_TOP[key], _same)]
    if key == "proj":
        return [("clip_proj.weight", _transpose)]
    for old, new in _TOP_PREFIX.items():
        if key.startswith(old) and key[len(old):] in ("weight", "bias"):
            return [(new + key[len(old):], _same)]
    m = re.fullmatch(r"attn_pool\.attn\.in_proj_(weight|bias)", key)
    if m:
        kind = m.group(1)
        return [(f"attn_pool.q.{kind}", _rows(0, width)), (f"attn_pool.kv.{kind}", _rows(width, None))]
    m = _BLOCK.match(key)
    if m:
        i, rest = m.groups()
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            return [(f"blocks.{i}.attn.qkv.{rest.rsplit('_', 1)[1]}", _same)]
        if rest in ("ls_1.gamma", "ls_2.gamma"):
            return [(f"blocks.{i}.ls{rest[3]}.gamma", _same)]
        part, _, leaf = rest.rpartition(".")
        if part in _BLOCK_PARTS and leaf in ("weight", "bias"):
            return [(f"blocks.{i}.{_BLOCK_PARTS[part]}.{leaf}", _same)]
    return None


def unwrap_state_dict(obj: object) -> dict[str, Tensor]:
    """Undo the nestings Meta-style files use: ``state_dict``/``weights`` wrappers and ``module.`` prefixes."""
    for _ in range(3):
        inner = next((obj[k] for k in ("state_dict", "weights") if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError("the checkpoint holds no state dict (expected a mapping of parameter names to tensors)")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise ConversionError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def split_vision(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The vision keys (``visual.`` stripped) and the deliberately dropped text-tower keys of a CLIP file.

    A file without ``visual.`` keys is taken as vision-only and nothing is dropped.
    """
    if not any(k.startswith("visual.") for k in state):
        return dict(state), []
    vision = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    rest = [k for k in state if not k.startswith("visual.")]
    unknown = [k for k in rest if not TEXT_KEY.match(k)]
    if unknown:
        raise ConversionError(f"unknown key(s) beside the vision tower, neither vision nor text: {unknown[:10]}")
    return vision, rest


def expected_shapes(cfg: PEConfig) -> dict[str, torch.Size]:
    """Every tensor the zoo net of ``cfg`` holds, with its shape (built on the meta device)."""
    with torch.device("meta"):
        net = PEViT(cfg)
    return {k: v.shape for k, v in net.state_dict().items()}


def describe_source(vision: Mapping[str, Tensor]) -> str:
    """A short description of the architecture a vision state dict looks like (width, patch, depth, tokens)."""
    conv = vision.get("conv1.weight")
    if conv is None or conv.dim() != 4:
        return "an unrecognised layout (no conv1.weight)"
    width, patch = conv.shape[0], conv.shape[-1]
    depth = 1 + max((int(m.group(1)) for k in vision if (m := _BLOCK.match(k))), default=-1)
    cls = "class_embedding" in vision
    pos = vision.get("positional_embedding")
    grid = int(round(((pos.shape[0] - cls) ** 0.5))) if pos is not None else 0
    return f"width {width}, patch {patch}, depth {depth}, {'a' if cls else 'no'} cls token, native {grid * patch}px"


def plan_conversion(vision: Mapping[str, Tensor], cfg: PEConfig, what: str = "this checkpoint") -> list[tuple[str, str, Transform]]:
    """Check a vision state dict against ``cfg`` and return ``(zoo_key, meta_key, transform)`` for every zoo tensor.

    Strict: every zoo tensor is produced with the right shape and every source key is used;
    anything else raises ``ConversionError`` naming the offending keys. Only shapes are read.
    """
    want = expected_shapes(cfg)
    plan: list[tuple[str, str, Transform]] = []
    unknown, unused = [], []
    for key, tensor in vision.items():
        targets = map_vision_key(key, cfg.width)
        if targets is None:
            unknown.append(key)
            continue
        for zkey, fn in targets:
            if zkey not in want:
                unused.append(key)
                break
            plan.append((zkey, key, fn))
    got = {z for z, _, _ in plan}
    missing = sorted(set(want) - got)
    problems = []
    if unknown:
        problems.append(f"unknown key(s) {unknown[:10]}")
    if unused:
        problems.append(f"key(s) this architecture has no place for {sorted(set(unused))[:10]}")
    if missing:
        problems.append(f"missing tensor(s) for {missing[:10]}")
    bad_shapes = []
    for zkey, mkey, fn in plan:
        shape = fn(torch.empty(vision[mkey].shape, device="meta")).shape
        if zkey in want and shape != want[zkey]:
            bad_shapes.append(f"{mkey} -> {zkey}: {tuple(shape)} != expected {tuple(want[zkey])}")
    if bad_shapes:
        problems.append("shape mismatch " + "; ".join(bad_shapes[:5]))
    if problems:
        raise ConversionError(
            f"{what} does not fit the requested architecture ({describe_config(cfg)}); it looks like "
            f"{describe_source(vision)}: " + "; ".join(problems)
        )
    return plan


def describe_config(cfg: PEConfig) -> str:
    return (
        f"width {cfg.width}, patch {cfg.patch_size}, depth {cfg.depth}, "
        f"{'a' if cfg.cls_token else 'no'} cls token, native {cfg.image_size}px"
    )


def meta_to_zoo(state_dict: Mapping[str, Tensor], cfg: PEConfig) -> dict[str, Tensor]:
    """Convert a Meta PE state dict (CLIP file, vision-only, nested or ``module.``-prefixed) to the zoo layout.

    The one mapping function: the converter CLI, the loader and the tests all go through it.
    """
    vision, _ = split_vision(unwrap_state_dict(state_dict))
    return {zkey: fn(vision[mkey]) for zkey, mkey, fn in plan_conversion(vision, cfg)}
