"""timm reads a zoo net's preprocessing: ``resolve_data_config({}, model=net)`` + ``create_transform(**cfg)``
give exactly ``zoo.classification_transform`` (timm's own defaults would be 224 px, bicubic, ImageNet stats, 0.875 crop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import zoo
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_vision_state_dict
from zoo.weights import convert_checkpoint

SPATIAL = "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial"


@pytest.fixture(scope="module")
def images(module_tmp) -> list[Image.Image]:
    """Photos-like RGB images of odd sizes, written as JPEG and PNG and read back as a user would."""
    tmp = module_tmp
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(97, 131), (333, 200), (17, 640), (1, 1), (1080, 721)]):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) % 256], -1)
        pixels = np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = tmp / f"im{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels, "RGB").save(path)
        out.append(Image.open(path))
    return out


def timm_transform(net):
    return create_transform(**resolve_data_config({}, model=net))


def assert_same(net, images, size, rgb_stats):
    ours, theirs = zoo.classification_transform(size, rgb_stats), timm_transform(net)
    for image in images:
        a, b = ours(image), theirs(image)
        assert a.shape == b.shape == (3, *size)
        assert torch.equal(a, b), (image.size, (a - b).abs().max())


@pytest.mark.parametrize("name", ["rope_i_vit_t16_pn_aps_c1_pe-core", "rope_i_vit_l14_pn_aps_c1_pe-core", SPATIAL])
def test_created_nets_carry_their_preprocessing(name, images):
    entry = get_entry(name)
    net = zoo.create_model(name, device="meta")
    cfg = resolve_data_config({}, model=net)
    assert cfg == {"input_size": (3, *entry.size), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                   "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "squash"}
    assert net.pretrained_cfg["num_classes"] == 0
    assert zoo.create_model(name, num_classes=7, device="meta").pretrained_cfg["num_classes"] == 7
    assert_same(net, images, entry.size, entry.rgb_stats)


def test_loaded_nets_follow_new_size(images, tmp_path):
    entry = get_entry(SPATIAL)
    src = tmp_path / entry.source.file
    torch.save(meta_vision_state_dict(entry.config, seed=1), src)
    convert_checkpoint(entry, src, tmp_path / "w")
    for new_size, size in [(None, entry.size), (224, (224, 224)), ((160, 336), (160, 336))]:
        net, info = zoo.load_pretrained_model(SPATIAL, new_size=new_size, weights_dir=tmp_path / "w")
        assert net.pretrained_cfg["input_size"] == (3, *size) == (3, *zoo.get_size_from_signature(info.signature))
        assert_same(net, images, size, info.rgb_stats)
        x = timm_transform(net)(images[0]).unsqueeze(0)
        assert net.detection_features(x)["neck"].shape[2:] == (size[0] // 16, size[1] // 16)  # the net takes it
    fast, _ = zoo.load_pretrained_model(SPATIAL, new_size=(160, 336), weights_dir=tmp_path / "w", optimize=True)
    assert resolve_data_config({}, model=fast)["input_size"] == (3, 160, 336)  # the optimized wrapper too


def test_clip_models_carry_it_too(images):
    model = zoo.create_clip("rope_i_vit_b16_pn_aps_c1_pe-core", device="meta")
    assert model.pretrained_cfg is model.visual.pretrained_cfg
    assert_same(model, images, (224, 224), {"mean": [0.5] * 3, "std": [0.5] * 3})
