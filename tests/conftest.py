import pytest
import torch

import zoo
from zoo.registry import get_entry


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def float32_packing(monkeypatch):
    """Pack float32 weights whatever this CPU's default (``Linear.pack_float32`` is off on Intel CPUs)."""
    from zoo.nets.pe_vit import Linear

    monkeypatch.setattr(Linear, "pack_float32", True)


ALL_MODELS = zoo.list_pretrained_models()


def entry_of(name: str):
    return get_entry(name)
