"""pe-zoo: Meta's Perception Encoder vision models, exact, fast and easy to load."""

import sys as _sys

from zoo import weights
from zoo.clip import PECLIP, create_clip, get_tokenizer, load_pretrained_clip, zero_shot_classifier, zero_shot_classify
from zoo.clip import tokenizer as _tokenizer
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
from zoo.weights import convert_text as _convert_text
from zoo.weights import writer as _writer

# The first version's module paths keep working (``zoo.convert.meta_to_zoo``, ``from zoo.tokenizer import ...``).
for _old, _module in {"convert": weights, "convert_text": _convert_text, "safetensors_writer": _writer, "tokenizer": _tokenizer}.items():
    _sys.modules.setdefault(f"zoo.{_old}", _module)
    globals()[_old] = _module

__all__ = [
    "ModelInfo", "PEConfig", "PEViT", "classification_transform", "create_model", "get_model_config",
    "get_size_from_signature", "list_pretrained_models", "load_pretrained_model", "optimize", "param_groups", "push_to_hub", "__version__",
    "PECLIP", "create_clip", "get_tokenizer", "load_pretrained_clip", "zero_shot_classifier", "zero_shot_classify",
    "embed_collection", "read_embeddings", "read_row_info", "search",
    "published_results",
    "from_open_clip", "from_timm", "to_open_clip", "to_timm",
]
