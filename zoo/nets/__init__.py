"""Network architectures: one RoPE-ViT configured for every PE vision checkpoint."""

from zoo.nets.pe_vit import PEConfig, PEViT

__all__ = ["PEConfig", "PEViT"]
