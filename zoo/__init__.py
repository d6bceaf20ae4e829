"""pe-zoo: Meta's Perception Encoder vision models, exact, fast and easy to load."""

import importlib as _importlib
import warnings as _warnings
from typing import Any as _Any

from zoo import weights
from zoo.clip import PECLIP, create_clip, get_tokenizer, load_pretrained_clip, zero_shot_classifier, zero_shot_classify
from zoo.collection import embed_collection, read_embeddings, read_row_info, search
from zoo.eval import published_results
from zoo.hub import push_to_hub
from zoo.integrations.open_clip import from_open_clip, to_open_clip
from zoo.integrations.timm import from_timm, to_timm
from zoo.loader import ModelInfo, get_size_from_signature, load_pretrained_model
from zoo.models import create_model
from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.optimize import optimize
from zoo.registry import get_model_config, list_pretrained_models
from zoo.training import param_groups
from zoo.transforms import classification_transform
from zoo.version import __version__

# The first version's module paths, kept for one release with a DeprecationWarning naming the new path
_MOVED = {"convert": "zoo.weights", "convert_text": "zoo.weights.convert_text", "safetensors_writer": "zoo.weights.writer",
          "tokenizer": "zoo.clip.tokenizer"}


def __getattr__(name: str) -> _Any:
    if name in _MOVED:
        _warnings.warn(f"zoo.{name} is deprecated and goes in the next release; use {_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return _importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "ModelInfo", "PEConfig", "PEViT", "classification_transform", "create_model", "get_model_config",
    "get_size_from_signature", "list_pretrained_models", "load_pretrained_model", "optimize", "param_groups", "push_to_hub", "__version__",
    "PECLIP", "create_clip", "get_tokenizer", "load_pretrained_clip", "zero_shot_classifier", "zero_shot_classify",
    "embed_collection", "read_embeddings", "read_row_info", "search",
    "published_results",
    "from_open_clip", "from_timm", "to_open_clip", "to_timm",
]
