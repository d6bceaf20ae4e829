import pytest
import torch

import zoo
from zoo.registry import get_entry


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ALL_MODELS = zoo.list_pretrained_models()


def entry_of(name: str):
    return get_entry(name)
