"""pe-zoo: Meta's Perception Encoder vision models, exact, fast and easy to load."""

from zoo.models import create_model
from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.registry import get_model_config, list_pretrained_models

__version__ = "0.1.0"

__all__ = ["PEConfig", "PEViT", "create_model", "get_model_config", "list_pretrained_models", "__version__"]
