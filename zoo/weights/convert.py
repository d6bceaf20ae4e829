"""Meta's PE checkpoint layout -> the zoo's state-dict layout; whole files converted into the zoo's safetensors (streamed, strict).

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

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.registry import Entry, load_registry
from zoo.weights.errors import ConversionError
from zoo.weights.integrity import file_sha256, record, sidecar_path
from zoo.weights.source import load_source, unwrap_state_dict
from zoo.weights.writer import TensorSpec, write_safetensors

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


CONVERTER_VERSION = 1  # bump when the output of the same source changes


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


def plan_problems(
    plan: list[tuple[str, str, Transform]], source: Mapping[str, Tensor], want: Mapping[str, torch.Size], unknown: list[str]
) -> list[str]:
    """What is wrong with a conversion plan: unknown source keys, surplus, missing and mis-shaped targets."""
    got = {z for z, _, _ in plan}
    problems = []
    if unknown:
        problems.append(f"unknown key(s) {unknown[:10]}")
    surplus = sorted(got - set(want))
    if surplus:
        problems.append(f"tensor(s) the target has no place for {surplus[:10]}")
    missing = sorted(set(want) - got)
    if missing:
        problems.append(f"missing tensor(s) for {missing[:10]}")
    bad = []
    for zkey, mkey, fn in plan:
        shape = fn(torch.empty(source[mkey].shape, device="meta")).shape
        if zkey in want and shape != want[zkey]:
            bad.append(f"{mkey} -> {zkey}: {tuple(shape)} != expected {tuple(want[zkey])}")
    if bad:
        problems.append("shape mismatch " + "; ".join(bad[:5]))
    return problems


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
    problems = plan_problems(plan, vision, want, unknown)
    if unused:
        problems.insert(1 if unknown else 0, f"key(s) this architecture has no place for {sorted(set(unused))[:10]}")
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



@dataclass(frozen=True)
class ConvertResult:
    """What ``convert_checkpoint`` wrote: the file, its size and sha256, and the source keys it dropped."""

    path: Path
    size: int
    sha256: str
    dropped: list[str]


def guess_entry(vision: Mapping[str, Tensor]) -> Entry | None:
    """The registry entry whose architecture a vision state dict fits exactly, if any."""
    for entry in load_registry().values():
        try:
            plan_conversion(vision, entry.config)
        except ConversionError:
            continue
        return entry
    return None


def output_path(entry: Entry, out_dir: str | os.PathLike) -> Path:
    """Where ``convert_checkpoint`` writes an entry's weights in ``out_dir``."""
    return Path(out_dir) / entry.weights.file


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


ZOO_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what a zoo file holds (--dtype choices)


def _names(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_source_tensors(plan: list[tuple[str, str, Transform]], source: Mapping[str, Tensor]) -> None:
    """Refuse, before anything is written, source tensors no weights can be made of: sparse, complex,
    integer or boolean ones (a PE checkpoint holds real floating-point weights only)."""
    bad: dict[str, list[str]] = {}
    for mkey in dict.fromkeys(m for _, m, _ in plan):
        t = source[mkey]
        if t.layout != torch.strided:
            kind = f"sparse ({t.layout})"
        elif t.is_complex():
            kind = f"complex ({t.dtype})"
        elif not t.is_floating_point() or t.dtype not in ZOO_DTYPES + (torch.float64,):
            kind = f"not floating-point weights ({t.dtype})"
        else:
            continue
        bad.setdefault(kind, []).append(mkey)
    if bad:
        raise ConversionError(
            "the checkpoint holds tensors that cannot be weights: "
            + "; ".join(f"{len(keys)} {kind}: {_names(keys)}" for kind, keys in bad.items())
            + ". It is not a PE checkpoint as Meta publishes it (every weight is a dense float tensor); nothing was written"
        )


def source_dtype(state: Mapping[str, Tensor]) -> torch.dtype:
    """The dtype a conversion writes by default: the checkpoint's dominant float dtype (most elements), float64
    stored as float32. Every tensor of a zoo file has this one dtype, so a mixed file cannot reach inference."""
    count: dict[torch.dtype, int] = {}
    for t in state.values():
        if t.is_floating_point() and t.layout == torch.strided:
            count[t.dtype] = count.get(t.dtype, 0) + t.numel()
    dominant = max(count, key=lambda d: count[d], default=torch.float32)
    return dominant if dominant in ZOO_DTYPES else torch.float32


def _finite(t: Tensor, source: Tensor, mkey: str, zkey: str) -> Tensor:
    """``t`` (``source`` mapped and cast) when every value is finite; otherwise a ``ConversionError`` naming the tensor."""
    if bool(torch.isfinite(t).all()):
        return t
    bad = int((~torch.isfinite(source)).sum())
    if bad:
        raise ConversionError(
            f"source tensor {mkey} (zoo {zkey}) holds {bad} non-finite value(s) (NaN or Inf): the checkpoint is "
            "corrupt, so it is refused and nothing was written; use an intact copy of Meta's file"
        )
    top = float(source.abs().max())
    raise ConversionError(
        f"source tensor {mkey} (zoo {zkey}) holds values up to {top:g}, beyond the range of {t.dtype}: "
        "choose a wider --dtype (float32 or bfloat16); nothing was written"
    )


def plan_specs(
    plan: list[tuple[str, str, Transform]], source: Mapping[str, Tensor], dtype: torch.dtype | None
) -> list[TensorSpec]:
    """The streaming writer's specs for a checked plan: each tensor is mapped, cast to ``dtype`` (default: the
    source's dominant float dtype, ``source_dtype``) and checked finite only when written."""
    check_source_tensors(plan, source)
    to = dtype if dtype is not None else source_dtype(source)
    if to not in ZOO_DTYPES:
        raise ConversionError(f"dtype {to} is not one the zoo stores; choose one of {[str(d) for d in ZOO_DTYPES]}")
    specs = []
    for zkey, mkey, fn in plan:
        src = source[mkey]
        shape = tuple(fn(torch.empty(src.shape, device="meta")).shape)
        specs.append(TensorSpec(zkey, shape, to, lambda fn=fn, src=src, m=mkey, z=zkey: _finite(fn(src).to(to), src, m, z)))
    return specs


def refuse_existing(out: Path, force: bool) -> None:
    """Raise unless ``out`` may be written: a folder or a dangling link in its place is named as such, and an
    existing file needs ``force``."""
    if out.is_symlink() and not out.exists():
        raise ConversionError(f"{out} is a symbolic link to {os.readlink(out)}, which does not exist: remove the link (or restore its target)")
    if out.is_dir():
        raise ConversionError(f"{out} is a folder, not a weights file: move it away to write the weights there")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass force=True (--force) to overwrite it")


def write_weights(out: Path, specs: list[TensorSpec], metadata: dict[str, str], force: bool) -> tuple[int, str]:
    """Write a zoo weights file atomically and record its sha256 the moment it is in place.

    The old file's record is dropped just before the new file replaces it, so an interruption never
    leaves a file beside a record of another; without ``force`` an existing file is never replaced.
    """
    forget = lambda: sidecar_path(out).unlink(missing_ok=True)  # noqa: E731
    if not out.exists():
        with contextlib.suppress(OSError):  # a record without its file is stale (no folder yet: no record)
            forget()
    size, sha = write_safetensors(out, specs, metadata, overwrite=force, before_replace=forget)
    try:
        record(out, sha)
    except OSError:  # a folder where the file could be written but not its record: hashed again on load
        pass
    return size, sha


def file_metadata(
    entry: Entry, source: str | os.PathLike, source_sha256: str | None, specs: list[TensorSpec]
) -> dict[str, str]:
    """The ``__metadata__`` of a zoo weights file converted from ``source`` (the vision and the text file alike)."""
    return {
        "format": "pe-zoo",
        "name": entry.name,
        "family": entry.family,
        "variant": entry.variant,
        "config": json.dumps(entry.config.to_dict()),
        "signature": json.dumps(entry.signature),
        "rgb_stats": json.dumps(entry.rgb_stats),
        "source_repo": entry.source.repo,
        "source_file": entry.source.file,
        "source_sha256": source_sha256 or file_sha256(source),
        "converter_version": str(CONVERTER_VERSION),
        "dtype": ",".join(sorted({_dtype_name(s.dtype) for s in specs})),
    }


def convert_checkpoint(
    entry: Entry,
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    force: bool = False,
    source_sha256: str | None = None,
) -> ConvertResult:
    """Convert Meta's checkpoint ``source`` into ``out_dir/<entry.weights.file>``, streaming and strict.

    Every check runs before a byte is written; tensors are then renamed, cast to ``dtype`` (default:
    the checkpoint's dominant float dtype), checked finite and written one at a time to a temporary file
    that becomes the output at the end (``write_weights``: atomic, sha256 recorded at once). Without
    ``force`` an existing output is never replaced, even by a conversion racing this one.
    """
    out = output_path(entry, out_dir)
    refuse_existing(out, force)
    state = load_source(source)
    vision, dropped = split_vision(state)
    try:
        plan = plan_conversion(vision, entry.config, what=f"{Path(source).name} (requested: {entry.family} {entry.variant}, {entry.name})")
    except ConversionError as e:
        other = guess_entry(vision)
        if other is None:
            hint = "it matches no checkpoint of the registry"
        else:
            hint = (f"it looks like {other.variant} ({other.name}); convert it with "
                    f"`python -m converters.pe_{other.family} --variant {other.variant.split('-')[0]}"
                    f"{' --tiling' if other.variant.endswith('-Tiling') else ''}`")
        raise ConversionError(f"{e}. {hint}") from None
    specs = plan_specs(plan, vision, dtype or source_dtype(state))
    metadata = file_metadata(entry, source, source_sha256, specs)
    size, sha = write_weights(out, specs, metadata, force)
    return ConvertResult(path=out, size=size, sha256=sha, dropped=dropped)


__all__ = [
    "CONVERTER_VERSION", "TEXT_KEY", "ConvertResult", "convert_checkpoint", "describe_config", "describe_source",
    "expected_shapes", "file_metadata", "guess_entry", "map_vision_key", "meta_to_zoo", "output_path",
    "plan_conversion", "plan_problems", "plan_specs", "split_vision",
]
