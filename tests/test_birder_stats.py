"""zoo.birder hands birder the checkpoint's own normalisation: mean as mean, std as std. Every registry entry has
mean = std = 0.5, where a swap changes nothing, so the entry here gets distinct statistics, as a checkpoint trained
with its own (ImageNet's, say) would have."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from tests.weights_env import CORE, add_meta_source, hub  # noqa: F401 (fixture)
from zoo.registry import load_registry

MEAN, STD = (0.1, 0.3, 0.6), (0.2, 0.4, 0.9)


def test_birder_gets_mean_and_std_in_their_places(hub, tmp_path, monkeypatch):
    birder = pytest.importorskip("birder")
    import zoo.birder as zb

    add_meta_source(hub, CORE, tmp_path)
    monkeypatch.setitem(load_registry(), CORE.name, dataclasses.replace(CORE, rgb_stats={"mean": list(MEAN), "std": list(STD)}))
    _, info = zb.load_pretrained_model(CORE.name, inference=True)
    assert info.rgb_stats == {"mean": MEAN, "std": STD}
    transform = birder.classification_transform(birder.get_size_from_signature(info.signature), info.rgb_stats)
    value = np.array([200, 100, 50], dtype=np.uint8)
    x = transform(Image.fromarray(np.broadcast_to(value, (40, 40, 3)).copy()))  # a constant image: resizing changes nothing
    want = (torch.tensor(value / 255.0) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x.mean(dim=(1, 2)).double(), want, atol=1e-3, rtol=0)
