"""``to_open_clip`` / ``from_open_clip``: a zoo PE-Core CLIP model as open_clip's own PE-Core model and back.

open_clip's PE-Core is a ``CustomTextCLIP``: the vision tower is timm's PE model (``visual.trunk``, whose
head is the CLIP projection) and the text tower keeps Meta's key layout. So the vision tensors go
through ``zoo.integrations.timm`` and the text tensors through the zoo's Meta text mapping, read
backwards (each of its transforms, identity or transpose, is its own inverse).
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.clip.model import PECLIP
from zoo.integrations.timm import entry_of, from_timm, timm_state_dict
from zoo.registry import Entry
from zoo.weights.convert_text import map_text_key, meta_text_to_zoo

# open_clip's config name of each PE-Core size
OPEN_CLIP_NAMES = {"T16": "PE-Core-T-16-384", "S16": "PE-Core-S-16-384", "B16": "PE-Core-B-16",
                   "L14": "PE-Core-L-14-336", "G14": "PE-Core-bigG-14-448"}


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise ImportError('zoo.to_open_clip / zoo.from_open_clip need open_clip: pip install "pe-zoo[open_clip]"') from None
    return open_clip


def open_clip_name(entry: Entry) -> str:
    """open_clip's model name for a PE-Core registry entry (what ``open_clip.get_tokenizer`` takes)."""
    if entry.family != "core":
        raise ValueError(f"{entry.name} is not a CLIP model: only PE-Core checkpoints exist in open_clip")
    return OPEN_CLIP_NAMES[entry.variant]


def to_open_clip(clip_model: PECLIP) -> torch.nn.Module:
    """open_clip's PE-Core model (``open_clip.create_model``) holding ``clip_model``'s weights.

    ``encode_image`` and ``encode_text`` equal the zoo model's; the tokenizer is
    ``open_clip.get_tokenizer(open_clip_name(entry))``, which is the zoo's. The zoo model must be at its
    full depth (open_clip builds its configs as published).
    """
    open_clip = _open_clip()
    visual = clip_model.visual
    entry = entry_of(visual.cfg)
    if visual.cfg != entry.config or clip_model.text.context_length != entry.text.context_length:
        raise ValueError(f"to_open_clip needs the published architecture of {entry.name} (open_clip builds its own config)")
    model = open_clip.create_model(open_clip_name(entry), pretrained=None)
    size = entry.size
    trunk = timm_state_dict(visual, size)
    text_zoo = clip_model.text.state_dict()
    state = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    for key in model.text.state_dict():
        target = map_text_key(key)
        if target is None:
            raise ValueError(f"open_clip's text key {key!r} has no zoo counterpart; this open_clip version is not supported")
        zoo_key, transform = target
        state[f"text.{key}"] = transform(text_zoo[zoo_key].detach())
    state["logit_scale"] = clip_model.logit_scale.detach().reshape(model.logit_scale.shape)
    model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    p = visual.patch_embed.weight
    return model.to(device=p.device, dtype=p.dtype).train(clip_model.training)


def from_open_clip(model: torch.nn.Module) -> PECLIP:
    """A zoo ``PECLIP`` holding the weights of open_clip's PE-Core model ``model``."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not hasattr(model, "text"):
        raise ValueError("from_open_clip takes open_clip's PE-Core models (open_clip.create_model('PE-Core-...'))")
    visual = from_timm(trunk)
    entry = entry_of(visual.cfg)
    if visual.cfg.clip_dim is None:
        raise ValueError("this open_clip model's vision head is not a CLIP projection; it is not a PE-Core CLIP model")
    text_state = {k: v.detach() for k, v in model.text.state_dict().items()}
    text_state["logit_scale"] = model.logit_scale.detach().reshape(())
    text = meta_text_to_zoo(text_state, entry.text, visual.cfg.clip_dim)
    logit_scale = text.pop("logit_scale")
    with torch.device("meta"):
        clip = PECLIP(visual.cfg, entry.text)
    clip.visual = visual
    clip.text.load_state_dict({k: v.clone() for k, v in text.items()}, strict=True, assign=True)
    clip.logit_scale = torch.nn.Parameter(logit_scale.clone().reshape(()))
    p = visual.patch_embed.weight
    return clip.to(device=p.device, dtype=p.dtype).train(model.training)


__all__ = ["OPEN_CLIP_NAMES", "from_open_clip", "open_clip_name", "to_open_clip"]
