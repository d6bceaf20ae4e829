"""pe-zoo: Meta's Perception Encoder vision models, exact, fast and easy to load."""

from zoo.clip import PECLIP, create_clip, load_pretrained_clip, zero_shot_classifier, zero_shot_classify
from zoo.loader import ModelInfo, get_size_from_signature, load_pretrained_model
from zoo.models import create_model
from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.optimize import optimize
from zoo.registry import get_model_config, list_pretrained_models
from zoo.tokenizer import get_tokenizer
from zoo.transforms import classification_transform

__version__ = "0.1.0"

__all__ = [
    "ModelInfo", "PEConfig", "PEViT", "classification_transform", "create_model", "get_model_config",
    "get_size_from_signature", "list_pretrained_models", "load_pretrained_model", "optimize", "__version__",
    "PECLIP", "create_clip", "get_tokenizer", "load_pretrained_clip", "zero_shot_classifier", "zero_shot_classify",
]
