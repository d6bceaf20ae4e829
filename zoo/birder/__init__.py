"""pe-zoo as a birder plugin: every zoo checkpoint as a birder network and detection backbone.

``import zoo.birder`` registers one birder network per zoo checkpoint in
``birder.model_registry.registry`` (name policy: see ``NETWORK_NAMES`` and the README), so
``registry.net_factory(name, num_classes)`` builds it and birder's detectors take it as a backbone.
``load_pretrained_model(name, ...)`` is ``birder.load_pretrained_model`` for the zoo's verified weights.

The network wraps the zoo's ``PEViT`` (``self.body``) in birder's ``DetectorBackbone`` contract; the
numbers are the zoo's: at every input size the position embedding is resized bilinearly from the
native grid on the fly (Meta's rule), so ``adjust_size`` changes no tensor.
"""

from __future__ import annotations

import logging
import os

from dataclasses import fields
from typing import Any, ClassVar

try:
    from birder.common.fs_ops import ModelInfo
    from birder.model_registry import registry
    from birder.net.base import DetectorBackbone, normalize_out_indices
except ModuleNotFoundError as e:  # only birder itself missing gets the one-line hint
    if (e.name or "").split(".")[0] != "birder":
        raise
    raise ImportError("zoo.birder needs birder: pip install 'pe-zoo[birder]'") from None

import torch

from zoo.loader import load_entry
from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.registry import Entry, get_entry, list_pretrained_models

logger = logging.getLogger("zoo")

# PEConfig fields a birder config carries (the CLIP projection is not part of a birder backbone:
# like birder's own PE weights, the net ends at the pooled embedding).
_ARCH_KEYS = tuple(f.name for f in fields(PEConfig) if f.name != "clip_dim")
_EXTRA_KEYS = ("out_indices", "mlp_head", "head_bias")  # birder's multi-stage detection and classifier-head options


def _pe_config(config: dict[str, Any]) -> PEConfig:
    unknown = sorted(set(config) - set(_ARCH_KEYS) - set(_EXTRA_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for a PE network; known: {sorted(_ARCH_KEYS + _EXTRA_KEYS)}")
    return PEConfig.from_dict({k: config[k] for k in _ARCH_KEYS if k in config})


class PEBirderNet(DetectorBackbone):
    """A zoo ``PEViT`` behind birder's network and ``DetectorBackbone`` interface.

    Tokens are ``[special, patches]`` (``num_special_tokens`` is 1 with a class token, else 0).
    ``detection_features`` gives ``{"neck": [B, W, H/P, W/P]}`` (the final tokens, as the zoo's), or
    with ``config={"out_indices": [...]}`` one ``"block{i}"`` map per listed block.
    """

    block_group_regex = r"body\.blocks\.(\d+)"
    scriptable = False  # birder traces it (torch.jit.trace) instead
    zoo_name: ClassVar[str | None] = None  # the zoo checkpoint a registered subclass stands for

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: dict[str, Any] | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        if self.config is None:
            raise ValueError("PEBirderNet needs a config: build a registered network, e.g. registry.net_factory(name, ...)")
        if input_channels != 3:
            raise ValueError(f"PE networks take RGB input (3 channels), got input_channels={input_channels}")
        cfg = _pe_config(self.config)
        self._check_size(self.size, cfg.patch_size)
        self.body = PEViT(cfg)
        self.patch_size = cfg.patch_size
        self.num_special_tokens = cfg.num_prefix_tokens
        self.out_indices: list[int] | None = normalize_out_indices(self.config.get("out_indices"), cfg.depth)
        if self.out_indices is not None and len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(
                f"out_indices {self.config['out_indices']} name the same block twice (a model of {cfg.depth} blocks: "
                f"{self.out_indices}); give each stage once"
            )
        if self.out_indices is None:
            self.return_stages = ["neck"]
        else:
            self.return_stages = [f"block{i}" for i in self.out_indices]
        self.return_channels = [cfg.width] * len(self.return_stages)
        self.embedding_size = self.feature_dim = self.stem_width = cfg.width
        self.max_stride = self.stem_stride = cfg.patch_size
        self.classifier = self.create_classifier()

    @staticmethod
    def _check_size(size: tuple[int, int], patch: int) -> None:
        if not all(isinstance(s, int) and s > 0 and s % patch == 0 for s in size):
            raise ValueError(f"input size {tuple(size)} must be positive multiples of the patch size {patch}")

    # ------------------------------------------------------------ contract
    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        w = self.body.patch_embed.weight
        self.classifier.to(device=w.device, dtype=w.dtype)

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Declare another input size; nothing is resized (the net resizes from the native grid per call)."""
        self._check_size(new_size, self.patch_size)
        super().adjust_size(tuple(new_size))

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        super().freeze(freeze_classifier=freeze_classifier)
        if unfreeze_features:  # what turns tokens into the embedding
            for m in (self.body.norm_post, self.body.attn_pool):
                if m is not None:
                    m.requires_grad_(True)

    def strip_for_forward_features(self) -> None:
        super().strip_for_forward_features()
        self.body.attn_pool = None

    def set_grad_checkpointing(
        self, enable: bool = True, *, segments: int | None = None, preserve_rng_state: bool = True, use_reentrant: bool = False,
    ) -> None:
        """Recompute each block's activations in the backward pass (the zoo net's own checkpointing, per block)."""
        if segments is not None or use_reentrant:
            raise ValueError("zoo networks checkpoint every block, non-reentrant; segments and use_reentrant are not taken")
        self.body.set_grad_checkpointing(enable)

    def strip_for_detection_features(self) -> None:
        super().strip_for_detection_features()
        self.body.attn_pool = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens [B, N, W] (special tokens first), after ln_post where the model has it."""
        return self.body.forward_features(x)

    def flatten_features(self, features: torch.Tensor, include_special_tokens: bool = True) -> torch.Tensor:
        return features if include_special_tokens else features[:, self.num_special_tokens :]

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.body.pool(features)

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.out_indices is None:
            return self.body.detection_features(x)
        maps = self.body.detection_features(x, layers=self.out_indices)
        return {name: maps[name] for name in self.return_stages}

    def freeze_stages(self, up_to_stage: int) -> None:
        """Freeze the stem (patch embedding, position embedding, class token), then the first ``up_to_stage`` stages."""
        body = self.body
        for p in (body.patch_embed.weight, body.pos_embed, body.cls_token):
            if p is not None:
                p.requires_grad_(False)
        if up_to_stage <= 0:
            return
        body.norm_pre.requires_grad_(False)
        ends = [len(body.blocks) - 1] if self.out_indices is None else sorted(set(self.out_indices))
        last = ends[min(up_to_stage, len(ends)) - 1]
        for blk in body.blocks[: last + 1]:
            blk.requires_grad_(False)
        if self.out_indices is None:  # the "neck" stage ends with ln_post
            body.norm_post.requires_grad_(False)


# --------------------------------------------------------------------------- registration
def _arch_name(entry: Entry) -> str:
    """birder's architecture name for a checkpoint: its name without the ``_pe-<family>`` tag."""
    return entry.name.rsplit("_", 1)[0]


def _birder_config(entry: Entry) -> dict[str, Any]:
    data = entry.config.to_dict()
    return {k: data[k] for k in _ARCH_KEYS}


NETWORKS: dict[str, type[PEBirderNet]] = {}  # zoo checkpoint name -> its network class
NETWORK_NAMES: dict[str, str] = {}  # zoo checkpoint name -> the name registered in birder (absent: not registered)
ALIASES: dict[str, str] = {}  # birder architecture name -> the registered zoo network it builds


def _register_all() -> None:
    names = list_pretrained_models()
    arch_users: dict[str, list[str]] = {}
    for name in names:
        if not get_entry(name).variant.endswith("-Tiling"):  # a -Tiling release shares its base's architecture name
            arch_users.setdefault(_arch_name(get_entry(name)), []).append(name)
    for name in names:
        entry = get_entry(name)
        cls = type(name, (PEBirderNet,), {
            "config": _birder_config(entry), "default_size": entry.size, "zoo_name": name, "__module__": __name__,
        })
        NETWORKS[name] = cls
        if registry.exists(name):  # never replace one of birder's own registrations
            logger.warning("birder already has a network named %s; the zoo's is not registered under that name", name)
            continue
        registry.register_model(name, cls)
        registry.registered_configs[name] = cls  # so birder's checkpoints record it as a registered name
        NETWORK_NAMES[name] = name
    for arch, users in arch_users.items():
        # an architecture name birder lacks that only one zoo checkpoint has becomes an alias of it
        if len(users) == 1 and users[0] in NETWORK_NAMES and not registry.exists(arch) and arch not in registry.name_aliases:
            registry.register_name_alias(arch, users[0])
            ALIASES[arch] = users[0]


_register_all()


# --------------------------------------------------------------------------- loading
def load_pretrained_model(
    weights: str,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    new_size: tuple[int, int] | int | None = None,
    custom_config: dict[str, Any] | None = None,
    dst: str | os.PathLike | None = None,
    file_format: str = "safetensors",
    progress_bar: bool = True,
) -> tuple[PEBirderNet, ModelInfo]:
    """``birder.load_pretrained_model`` for a zoo checkpoint: ``(net, birder ModelInfo)``.

    The weights are the zoo's, resolved, converted and verified exactly as ``zoo.load_pretrained_model``
    does (``dst`` is its ``weights_dir``); the CLIP projection of PE-Core is left out, as in birder.
    ``new_size`` calls ``net.adjust_size`` and shows in the signature; ``custom_config`` may set
    ``out_indices`` (multi-stage detection features). ``file_format`` "pt"/"safetensors" both read the
    zoo's safetensors; "pts"/"pt2" are not served.
    """
    if file_format not in ("pt", "safetensors"):
        raise ValueError(f"file_format {file_format!r} is not served by the zoo; use 'safetensors' (or 'pt')")
    extra = sorted(set(custom_config or {}) - set(_EXTRA_KEYS))
    if extra:
        raise ValueError(f"custom_config key(s) {extra} would change the pretrained architecture; allowed: {list(_EXTRA_KEYS)}")
    entry = get_entry(weights)
    pe, info = load_entry(
        entry, inference=inference, device=device, dtype=dtype, new_size=new_size,
        weights_dir=dst, progress_bar=progress_bar,
    )
    with torch.device("meta"):  # no random init: the loaded tensors are assigned below
        net = NETWORKS[entry.name](3, 0, config=custom_config)
    state = {k: v for k, v in pe.state_dict().items() if not k.startswith("clip_proj.")}
    net.body.load_state_dict(state, strict=True, assign=True)
    net.body.requires_grad_(not inference)
    if info.size != net.size:
        net.adjust_size(info.size)
    net.train(not inference)
    rgb_stats = {k: tuple(v) for k, v in info.rgb_stats.items()}
    return net, ModelInfo({}, info.signature, rgb_stats, custom_config or None)


__all__ = ["ALIASES", "NETWORKS", "NETWORK_NAMES", "PEBirderNet", "load_pretrained_model"]
