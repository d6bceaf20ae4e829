"""CLIP for PE-Core: the two towers as one model, zero-shot classification, and CLIP's tokenizer."""

from zoo.clip.model import (
    PECLIP, create_clip, load_clip_entry, load_meta_weights, load_pretrained_clip, zero_shot_classifier, zero_shot_classify,
)
from zoo.clip.tokenizer import Tokenizer, get_tokenizer

__all__ = [
    "PECLIP", "Tokenizer", "create_clip", "get_tokenizer", "load_clip_entry", "load_meta_weights", "load_pretrained_clip",
    "zero_shot_classifier", "zero_shot_classify",
]
