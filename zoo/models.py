"""Build nets from registry names."""

from __future__ import annotations

import torch

from zoo.nets.pe_vit import PEViT
from zoo.registry import get_entry


def create_model(
    name: str,
    *,
    num_classes: int = 0,
    drop_path_rate: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> PEViT:
    """A net of a registry entry with random weights; ``device="meta"`` builds it without memory.

    ``num_classes``: a linear head over the embedding (0: none). ``drop_path_rate``: stochastic depth
    for fine-tuning (see ``PEViT``).
    """
    cfg = get_entry(name).config
    with torch.device(device or "cpu"):
        net = PEViT(cfg, drop_path_rate=drop_path_rate)
        if num_classes:
            net.reset_classifier(num_classes)
    return net.to(dtype) if dtype is not None else net
