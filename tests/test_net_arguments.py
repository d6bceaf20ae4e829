"""Net-level argument handling (issue 14 items 11 and 13): empty batches, integral numbers, validation first."""

import dataclasses

import numpy as np
import pytest
import torch

import zoo
from zoo.loader import _input_size
from zoo.registry import get_entry

NAME = "rope_i_vit_t16_pn_aps_c1_pe-core"
CFG = dataclasses.replace(get_entry(NAME).config, depth=2)


@pytest.fixture(scope="module")
def net():
    return zoo.PEViT(CFG).eval()


@pytest.mark.parametrize("grad", [False, True])
def test_empty_batch_gives_empty_maps(net, grad):
    x = torch.randn(0, 3, 48, 32)
    with torch.set_grad_enabled(grad):
        maps = net.detection_features(x)
        assert maps["neck"].shape == (0, CFG.width, 3, 2)
        taps = net.detection_features(x, layers=[0, -1])
        assert {k: tuple(v.shape) for k, v in taps.items()} == {"block0": (0, CFG.width, 3, 2), "block1": (0, CFG.width, 3, 2)}
        assert net.embedding(x).shape == (0, CFG.width)


def test_layers_take_integral_numbers_only(net):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = net.detection_features(x, layers=[np.int64(1), torch.tensor(0)])
        b = net.detection_features(x, layers=[1, 0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for bad in (1.0, "1", None, True):
        with pytest.raises(TypeError, match="each layer must be an integer"):
            net.detection_features(x, layers=[bad])
    with pytest.raises(ValueError, match="out of range"):
        net.detection_features(x, layers=[np.int64(5)])


def test_reset_classifier_validates_before_changing_anything():
    net = zoo.PEViT(CFG)
    net.reset_classifier(3)
    head = net.head
    for bad, err in ((-1, ValueError), (2.0, TypeError), ("3", TypeError), (None, TypeError)):
        with pytest.raises(err, match="num_classes"):
            net.reset_classifier(bad)
        assert net.num_classes == 3 and net.head is head
    net.reset_classifier(np.int64(5))
    assert net.num_classes == 5 and type(net.num_classes) is int and net.head.out_features == 5
    net.reset_classifier(0)
    assert isinstance(net.head, torch.nn.Identity)


def test_new_size_integral_numbers():
    entry = get_entry(NAME)
    assert _input_size(entry, np.int64(384)) == (384, 384)
    assert _input_size(entry, (np.int32(320), 448)) == (320, 448)
    assert _input_size(entry, [torch.tensor(64), 32]) == (64, 32)
    for bad in (384.0, "384", (384.0, 384), (384,), (1, 2, 3), True, 3.5):
        with pytest.raises(TypeError, match="new_size must be an integer or a .height, width. pair of integers"):
            _input_size(entry, bad)
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        _input_size(entry, np.int64(100))
