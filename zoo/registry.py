"""Read and validate ``registry.yaml``, the one catalogue of every checkpoint the zoo serves."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import math
import re
from collections.abc import Hashable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from zoo.nets.pe_vit import PEConfig
from zoo.nets.text import TextConfig

FAMILIES = ("core", "spatial", "lang")
PAPERS = ("vit", "rope-vit", "perception-encoder", "perceptionlm")


@dataclass(frozen=True)
class Source:
    repo: str  # facebook/<NAME>
    file: str  # <NAME>.pt


@dataclass(frozen=True)
class Weights:
    file: str  # <name>.safetensors
    sha256: str | None
    hub_repo: str | None  # a published converted repo, when there is one


@dataclass(frozen=True)
class Entry:
    """One registry entry: a checkpoint the zoo serves."""

    name: str
    family: str
    variant: str
    description: str
    config: PEConfig
    signature: dict[str, Any]
    rgb_stats: dict[str, list[float]]
    source: Source
    weights: Weights
    license: str
    papers: tuple[str, ...]
    text: TextConfig | None = None  # Core entries only
    published: dict[str, Any] | None = None  # {"source", "url", "results": {dataset: value}}: Meta's figures, cited

    @property
    def size(self) -> tuple[int, int]:
        return (self.config.image_size, self.config.image_size)


class RegistryError(ValueError):
    """registry.yaml is malformed."""


class UnknownModelError(KeyError):
    """A name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "family": str,
    "variant": str,
    "description": str,
    "config": dict,
    "signature": dict,
    "rgb_stats": dict,
    "source": dict,
    "weights": dict,
    "license": str,
    "card": dict,
    "text": dict,  # required for Core, absent otherwise
    "published": dict,  # optional: Meta's published results (see _published)
}
_OPTIONAL = {"text", "published"}


def _field(name: str, where: str, data: dict, key: str, typ: type | tuple[type, ...], nullable: bool = False) -> Any:
    if key not in data:
        raise RegistryError(f"registry entry {name!r}: missing field '{where}{key}'")
    value = data[key]
    if value is None and nullable:
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise RegistryError(f"registry entry {name!r}: field '{where}{key}' must be {want}, got {value!r}")
    return value


def _positive(name: str, where: str, data: dict, key: str) -> None:
    if data[key] <= 0:
        raise RegistryError(f"registry entry {name!r}: field '{where}{key}' must be a positive integer, got {data[key]!r}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (each name or field may appear once)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_shape(name: str, where: str, sig: dict) -> list[int]:
    items = _field(name, "signature.", sig, where, list)
    if len(items) != 1 or not isinstance(items[0], dict) or "data_shape" not in items[0]:
        raise RegistryError(f"registry entry {name!r}: field 'signature.{where}' must be [{{data_shape: [...]}}]")
    shape = items[0]["data_shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RegistryError(f"registry entry {name!r}: field 'signature.{where}[0].data_shape' must be a list of ints")
    return shape


def _published(name: str, data: dict) -> dict[str, Any]:
    """``published: {source: text, url: https://..., results: {dataset: number in [0, 100]}}``, checked."""
    extra = sorted(set(data) - {"source", "url", "results"})
    if extra:
        raise RegistryError(f"registry entry {name!r}: unknown field(s) {['published.' + k for k in extra]}")
    source, url = _field(name, "published.", data, "source", str), _field(name, "published.", data, "url", str)
    if not url.startswith("https://"):
        raise RegistryError(f"registry entry {name!r}: field 'published.url' must be an https:// address, got {url!r}")
    results = _field(name, "published.", data, "results", dict)
    for key, value in results.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", key):
            raise RegistryError(f"registry entry {name!r}: 'published.results' key {key!r} must be a lowercase dataset name like imagenet-1k")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise RegistryError(f"registry entry {name!r}: field 'published.results.{key}' must be a number from 0 to 100, got {value!r}")
    return {"source": source, "url": url, "results": {k: float(v) for k, v in results.items()}}


def _parse_entry(name: str, data: Any) -> Entry:
    if not isinstance(data, dict):
        raise RegistryError(f"registry entry {name!r}: must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_SCHEMA))
    if unknown:
        raise RegistryError(f"registry entry {name!r}: unknown field(s) {unknown}; allowed: {sorted(_SCHEMA)}")
    for key, typ in _SCHEMA.items():
        if key not in _OPTIONAL:
            _field(name, "", data, key, typ)
    if data["family"] not in FAMILIES:
        raise RegistryError(f"registry entry {name!r}: field 'family' must be one of {FAMILIES}, got {data['family']!r}")
    try:
        cfg_data = dict(data["config"])
        types = {"patch_size": int, "width": int, "depth": int, "heads": int, "mlp_dim": int, "image_size": int,
                 "cls_token": bool, "pool": str, "ln_post": bool, "layer_scale": bool}
        for key, typ in types.items():
            _field(name, "config.", cfg_data, key, typ)
            if typ is int:
                _positive(name, "config.", cfg_data, key)
        if _field(name, "config.", cfg_data, "clip_dim", int, nullable=True) is not None:
            _positive(name, "config.", cfg_data, "clip_dim")
        config = PEConfig.from_dict(cfg_data)
    except (TypeError, ValueError) as e:
        if isinstance(e, RegistryError):
            raise
        raise RegistryError(f"registry entry {name!r}: field 'config' is invalid: {e}") from None
    sig = data["signature"]
    in_shape = _check_shape(name, "inputs", sig)
    out_shape = _check_shape(name, "outputs", sig)
    if in_shape != [0, 3, config.image_size, config.image_size]:
        raise RegistryError(f"registry entry {name!r}: field 'signature.inputs' must be [0, 3, {config.image_size}, {config.image_size}], got {in_shape}")
    if out_shape != [0, config.width]:
        raise RegistryError(f"registry entry {name!r}: field 'signature.outputs' must be [0, {config.width}], got {out_shape}")
    stats = data["rgb_stats"]
    for key in ("mean", "std"):
        v = _field(name, "rgb_stats.", stats, key, list)
        if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise RegistryError(f"registry entry {name!r}: field 'rgb_stats.{key}' must be 3 numbers, got {v!r}")
        if key == "std" and not all(x > 0 for x in v):
            raise RegistryError(f"registry entry {name!r}: field 'rgb_stats.std' must be 3 positive numbers (it divides), got {v!r}")
    src, w, card = data["source"], data["weights"], data["card"]
    source = Source(_field(name, "source.", src, "repo", str), _field(name, "source.", src, "file", str))
    weights = Weights(
        _field(name, "weights.", w, "file", str),
        _field(name, "weights.", w, "sha256", str, nullable=True),
        _field(name, "weights.", w, "hub_repo", str, nullable=True),
    )
    if not weights.file.endswith(".safetensors"):
        raise RegistryError(f"registry entry {name!r}: field 'weights.file' must end with .safetensors, got {weights.file!r}")
    if weights.file != PurePosixPath(weights.file).name or "\\" in weights.file or weights.file.startswith("."):
        raise RegistryError(
            f"registry entry {name!r}: field 'weights.file' must be a plain file name (no folder, no leading dot), "
            f"got {weights.file!r}"
        )
    if weights.sha256 is not None and (len(weights.sha256) != 64 or set(weights.sha256) - set("0123456789abcdef")):
        raise RegistryError(f"registry entry {name!r}: field 'weights.sha256' must be 64 lowercase hex digits or null")
    text = None
    if data["family"] == "core" or "text" in data:
        if data["family"] != "core":
            raise RegistryError(f"registry entry {name!r}: field 'text' is only for Core entries (CLIP models)")
        t = _field(name, "", data, "text", dict)
        keys = [f.name for f in dataclasses.fields(TextConfig)]
        extra = sorted(set(t) - set(keys))
        if extra:
            raise RegistryError(f"registry entry {name!r}: unknown field(s) {['text.' + k for k in extra]}")
        for k in keys:
            _field(name, "text.", t, k, int)
            _positive(name, "text.", t, k)
        text = TextConfig(**{k: t[k] for k in keys})
        if text.width % text.heads:
            raise RegistryError(f"registry entry {name!r}: field 'text.width' ({text.width}) must split into {text.heads} heads")
        if config.clip_dim is None:
            raise RegistryError(f"registry entry {name!r}: field 'config.clip_dim' must be set for a Core entry")
    papers = tuple(_field(name, "card.", card, "papers", list))
    bad = [p for p in papers if p not in PAPERS]
    if bad:
        raise RegistryError(f"registry entry {name!r}: field 'card.papers' has unknown paper(s) {bad}; known: {PAPERS}")
    return Entry(
        name=name,
        family=data["family"],
        variant=data["variant"],
        description=data["description"],
        config=config,
        signature=sig,
        rgb_stats={"mean": [float(x) for x in stats["mean"]], "std": [float(x) for x in stats["std"]]},
        source=source,
        weights=weights,
        license=data["license"],
        papers=papers,
        text=text,
        published=_published(name, _field(name, "", data, "published", dict)) if "published" in data else None,
    )


def parse_registry(text: str, origin: str = "registry.yaml") -> dict[str, Entry]:
    """Parse and validate registry YAML text into entries keyed by name."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise RegistryError(f"{origin} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise RegistryError(f"{origin} must map checkpoint names to entries")
    entries = {str(name): _parse_entry(str(name), data) for name, data in raw.items()}
    seen: dict[tuple[str, str], str] = {}
    for e in entries.values():
        key = (e.family, e.variant)
        if key in seen:
            raise RegistryError(f"registry entries {seen[key]!r} and {e.name!r} both claim family {e.family} variant {e.variant}")
        seen[key] = e.name
    return entries


def registry_path() -> Path:
    """Where the registry file lives (the top-level registry.yaml, shipped inside the package)."""
    return Path(str(resources.files("zoo") / "registry.yaml"))


@functools.cache
def load_registry() -> dict[str, Entry]:
    """The validated registry (read once per process)."""
    path = registry_path()
    return parse_registry(path.read_text(encoding="utf-8"), str(path))


def list_pretrained_models(pattern: str | None = None) -> list[str]:
    """Names of every checkpoint, optionally filtered by an fnmatch pattern (e.g. ``"*pe-core"``)."""
    names = sorted(load_registry())
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_entry(name: str) -> Entry:
    """The registry entry for ``name``; an unknown name raises an error listing the closest names."""
    reg = load_registry()
    if name in reg:
        return reg[name]
    close = difflib.get_close_matches(name, reg, n=3, cutoff=0.0)
    raise UnknownModelError(f"unknown model {name!r}; closest names: {', '.join(close)} (see zoo.list_pretrained_models())")


def find_entry(family: str, variant: str) -> Entry:
    """The entry of a family (core/spatial/lang) and variant (e.g. L14)."""
    for e in load_registry().values():
        if e.family == family and e.variant.upper() == variant.upper():
            return e
    variants = sorted(e.variant for e in load_registry().values() if e.family == family)
    raise UnknownModelError(f"no {family} checkpoint with variant {variant!r}; choose one of {variants}")


def get_model_config(name: str) -> PEConfig:
    """The architecture config of a registry entry."""
    return get_entry(name).config


__all__ = [
    "FAMILIES", "PAPERS", "Entry", "RegistryError", "Source", "UnknownModelError", "Weights", "find_entry",
    "get_entry", "get_model_config", "list_pretrained_models", "load_registry", "parse_registry", "registry_path",
]
