"""PE-Core as a CLIP model: the vision tower, the text tower and zero-shot classification."""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo import paths, weights
from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.nets.text import PEText
from zoo.nets.text import TextConfig
from zoo.registry import Entry, get_entry
from zoo.clip.tokenizer import Tokenizer
from zoo.loader import LoadRecord, build
from zoo.transforms import pretrained_cfg

Template = str | Callable[[str], str]


class PECLIP(nn.Module):
    """Meta's PE-Core CLIP: ``visual`` (``PEViT``), ``text`` (``PEText``) and ``logit_scale`` (use ``exp()``)."""

    def __init__(self, vision: PEConfig, text: TextConfig) -> None:
        super().__init__()
        if not vision.clip_dim:
            raise ValueError("a CLIP model needs a vision config with a CLIP projection (clip_dim): a PE-Core model")
        self.visual = PEViT(vision)
        self.text = PEText(text, vision.clip_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def image_size(self) -> int:
        """The native (training) resolution of the vision tower."""
        return self.visual.cfg.image_size

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features in CLIP space [B, clip_dim] (the vision ``clip_embedding``)."""
        features = self.visual.clip_embedding(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features in CLIP space [N, clip_dim] from token ids [N, L]."""
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_features, text_features, logit_scale.exp())`` with normalized features, like Meta's CLIP."""
        return self.encode_image(image, normalize=True), self.encode_text(text, normalize=True), self.logit_scale.exp()

    def load_zoo_state_dicts(
        self, vision: Mapping[str, torch.Tensor], text: Mapping[str, torch.Tensor], assign: bool = False
    ) -> None:
        """Load the zoo's vision tensors and text tensors (``PEText`` weights plus ``logit_scale``), strictly.

        ``assign=True`` takes the tensors as they are (for a model built on the meta device).
        """
        state = {f"visual.{k}": v for k, v in vision.items()}
        state.update({k if k == "logit_scale" else f"text.{k}": v for k, v in text.items()})
        self.load_state_dict(state, strict=True, assign=assign)


def _require_text(entry: Entry) -> Entry:
    if entry.text is None:
        raise ValueError(
            f"{entry.name} has no text tower: only PE-Core checkpoints are CLIP models; "
            "choose one of zoo.list_pretrained_models('*pe-core')"
        )
    return entry


def create_clip(name: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PECLIP:
    """The CLIP model of a PE-Core registry entry, with random weights (``device="meta"`` builds it without memory)."""
    entry = _require_text(get_entry(name))
    with torch.device(device or "cpu"):
        model = PECLIP(entry.config, entry.text)
    model.pretrained_cfg = model.visual.pretrained_cfg = pretrained_cfg(entry.size, entry.rgb_stats)  # timm's data config
    return model.to(dtype) if dtype is not None else model


def load_clip_entry(
    entry: Entry,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> PECLIP:
    """``load_pretrained_clip`` for a registry ``Entry`` (see there)."""
    _require_text(entry)
    vision = weights.resolve(entry, weights_dir, progress=progress_bar)
    text = weights.resolve(entry, weights_dir, progress=progress_bar, text=True)
    fix = f"rebuild them: {weights.converter_command(entry, paths.weights_dir(weights_dir))} --force"
    record = LoadRecord(entry, ((vision, "visual."), (text, "text.")), entry.size, fix, make=lambda: PECLIP(entry.config, entry.text))
    model, _ = build(record, inference=inference, device=device, dtype=dtype)  # logit_scale keeps its top-level name
    model.visual.pretrained_cfg = model.pretrained_cfg  # timm's data config
    return model


def load_pretrained_clip(
    name: str,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> PECLIP:
    """A pretrained PE-Core CLIP model from a registry name.

    Both files (``<name>.safetensors`` and ``<name>_text.safetensors``) are found like the vision
    loader's: the weights folder, the converted Hub repo, or Meta's checkpoint converted on the spot
    (cached), always verified. Built on the meta device, the safetensors memory-mapped in.
    ``inference=True``: eval mode without gradients; ``device``/``dtype``: converted after loading.
    """
    return load_clip_entry(
        get_entry(name), inference=inference, device=device, dtype=dtype,
        weights_dir=weights_dir, progress_bar=progress_bar,
    )


def load_meta_weights(model: PECLIP, state_dict: Mapping[str, torch.Tensor]) -> PECLIP:
    """Load a Meta PE-Core CLIP state dict (vision and text towers, strictly checked) into ``model``.

    A model built on the meta device takes contiguous copies of the converted tensors.
    """
    from zoo.weights import meta_to_zoo
    from zoo.weights.convert_text import meta_text_to_zoo

    vision = meta_to_zoo(state_dict, model.visual.cfg)
    text = meta_text_to_zoo(state_dict, model.text.cfg, model.visual.cfg.clip_dim)
    on_meta = model.logit_scale.is_meta
    if on_meta:
        vision, text = ({k: v.contiguous() for k, v in d.items()} for d in (vision, text))
    model.load_zoo_state_dicts(vision, text, assign=on_meta)
    return model


def fill_template(template: Template, name: str) -> str:
    """A prompt from a template (a string with one ``{}``, or a callable) and a class name; a bad template
    raises a ``ValueError`` saying what a template looks like."""
    if callable(template):
        return template(name)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # an unmatched brace
        raise ValueError(f"template {template!r} is not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
    if not fields:
        raise ValueError(f"template {template!r} has no '{{}}' where the class name goes, e.g. 'a photo of a {{}}.'")
    if fields != [""]:
        raise ValueError(
            f"template {template!r} must hold exactly one '{{}}' where the class name goes (and no other {{...}}), "
            "e.g. 'a photo of a {}.'; write a literal brace as {{ or }}"
        )
    return template.format(name)


@torch.no_grad()
def zero_shot_classifier(
    model: PECLIP,
    tokenizer: Tokenizer,
    class_names: Sequence[str],
    templates: Sequence[Template] = ("{}",),
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings [clip_dim, C]: each class's normalized text features averaged over the templates, normalized.

    Build it once and reuse it: ``zero_shot_classify(model, images, classifier)``.
    """
    if not class_names:
        raise ValueError("class_names is empty: give at least one class name")
    if not templates:
        raise ValueError("templates is empty: give at least one, e.g. ('a photo of a {}.',)")
    texts = [fill_template(t, name) for name in class_names for t in templates]
    p = model.logit_scale
    tokens = tokenizer(texts, context_length=model.context_length).to(p.device)
    features = torch.cat([model.encode_text(chunk, normalize=True) for chunk in tokens.split(batch_size)])
    features = features.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(features, dim=-1).T.to(p.dtype)


@torch.no_grad()
def zero_shot_classify(model: PECLIP, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Class probabilities [B, C] of preprocessed ``images`` [B, 3, H, W] over a ``zero_shot_classifier``."""
    image_features = model.encode_image(images, normalize=True)
    if classifier.shape[0] != image_features.shape[1]:
        raise ValueError(
            f"classifier has shape {tuple(classifier.shape)}; expected [{image_features.shape[1]}, classes] "
            "from zero_shot_classifier() of the same model"
        )
    logits = model.logit_scale.exp() * image_features @ classifier.to(image_features.dtype)
    return logits.softmax(dim=-1)


__all__ = [
    "PECLIP", "create_clip", "fill_template", "load_clip_entry", "load_pretrained_clip", "load_meta_weights",
    "zero_shot_classifier", "zero_shot_classify",
]
