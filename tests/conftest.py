import shutil

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


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder for files a module's tests share, removed when they end (a passing test's ``tmp_path`` goes at once)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


ALL_MODELS = zoo.list_pretrained_models()


def entry_of(name: str):
    return get_entry(name)
