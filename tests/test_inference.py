"""classification_transform against a hand-computed reference; infer_image / infer_batch semantics."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.inference import infer_batch, infer_image

STATS = {"mean": [0.48, 0.45, 0.40], "std": [0.26, 0.25, 0.27]}  # distinct per channel: order matters
LEVEL = 1 / 255 / min(STATS["std"])  # one uint8 level after normalization


def bilinear_1d(a: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Resize uint8 values along ``axis`` with a triangle filter widened by the downscale factor
    (bilinear with antialiasing, pixel centres at i + 0.5), rounded back to uint8."""
    n = a.shape[axis]
    scale = n / out_len
    support = max(scale, 1.0)
    rows = []
    for i in range(out_len):
        center = (i + 0.5) * scale
        w = np.array([max(0.0, 1 - abs(j + 0.5 - center) / support) for j in range(n)])
        rows.append(np.tensordot(w / w.sum(), a.astype(np.float64), axes=([0], [axis])))
    return np.floor(np.stack(rows, axis=axis) + 0.5).clip(0, 255)


def reference(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Squash resize (horizontal pass, then vertical), to [0, 1], normalize: [3, h, w]."""
    out = img.astype(np.float64)
    if img.shape[1] != w:
        out = bilinear_1d(out, w, axis=1)
    if img.shape[0] != h:
        out = bilinear_1d(out, h, axis=0)
    out = (out / 255 - np.array(STATS["mean"])) / np.array(STATS["std"])
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("shape,size", [((2, 4), (2, 2)), ((2, 2), (4, 4)), ((5, 3), (5, 3)), ((6, 9), (4, 4))])
def test_transform_matches_hand_computed(shape, size):
    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = zoo.classification_transform(size, STATS)(Image.fromarray(img))
    assert got.dtype == torch.float32 and tuple(got.shape) == (3, *size)
    # PIL works in fixed point: allow one uint8 level; a wrong filter, axis or channel order is far off
    assert np.abs(got.numpy() - reference(img, *size)).max() <= 1.01 * LEVEL
    if shape == size:
        assert np.abs(got.numpy() - reference(img, *size)).max() < 1e-6


def test_squash_is_not_nearest_or_crop():
    img = np.zeros((4, 8, 3), dtype=np.uint8)
    img[:, 4:] = 255  # left half black, right half white
    got = zoo.classification_transform(4, {"mean": [0.0] * 3, "std": [1.0] * 3})(Image.fromarray(img))
    row = got[0, 0].numpy()  # whole width squashed into 4 columns, the edge blended
    assert row[0] == 0 and row[3] == 1 and 0 < row[1] < 1 and 0 < row[2] < 1


def test_center_crop():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    crop = zoo.classification_transform((16, 16), STATS, center_crop=0.5)(img)
    full = zoo.classification_transform((32, 32), STATS)(img)
    assert tuple(crop.shape) == (3, 16, 16)
    assert torch.equal(crop, full[:, 8:24, 8:24])
    with pytest.raises(ValueError, match="center_crop"):
        zoo.classification_transform(16, STATS, center_crop=1.5)


def test_grayscale_rgba_palette_become_rgb():
    t = zoo.classification_transform((3, 3), STATS)
    gray = t(Image.new("L", (3, 3), 200))
    expected = torch.tensor([(200 / 255 - m) / s for m, s in zip(STATS["mean"], STATS["std"])])
    assert tuple(gray.shape) == (3, 3, 3)
    assert torch.allclose(gray[:, 1, 1], expected.float(), atol=1e-6)
    rgb = np.random.default_rng(2).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((3, 3, 1), 7, np.uint8)], axis=-1)
    assert torch.equal(t(Image.fromarray(rgba, "RGBA")), t(Image.fromarray(rgb)))
    pal = Image.fromarray(rgb).quantize(colors=4)
    assert pal.mode == "P" and torch.equal(t(pal), t(pal.convert("RGB")))


@pytest.fixture(scope="module")
def net():
    return zoo.create_model("rope_i_vit_t16_pn_aps_c1_pe-core").eval()


def images(tmp_path):
    rng = np.random.default_rng(3)
    a = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    path = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L").save(path)
    return a, path


def test_infer_image_headless_returns_the_embedding(net, tmp_path):
    a, path = images(tmp_path)
    t = zoo.classification_transform(64, STATS)
    out, emb = infer_image(net, a, t, return_embedding=True)
    with torch.no_grad():
        ref = net.embedding(t(a).unsqueeze(0)).numpy()
    assert out.shape == emb.shape == (1, 192) and isinstance(out, np.ndarray)
    assert np.array_equal(out, emb) and np.allclose(emb, ref, atol=1e-6)
    assert not math.isclose(out.sum(), 1.0, abs_tol=1e-3) and (out < 0).any()  # never a softmax
    assert np.array_equal(infer_image(net, str(path), t), infer_image(net, path, t))


def test_infer_with_head_is_softmax_and_batch_matches(tmp_path):
    net = zoo.create_model("rope_i_vit_t16_pn_aps_c1_pe-core", num_classes=5).eval()
    a, path = images(tmp_path)
    t = zoo.classification_transform(64, STATS)
    out, emb = infer_image(net, a, t, return_embedding=True)
    with torch.no_grad():
        x = t(a).unsqueeze(0)
        probs = net(x).softmax(-1).numpy()
        assert np.allclose(emb, net.embedding(x).numpy(), atol=1e-6)
    assert out.shape == (1, 5) and np.allclose(out, probs, atol=1e-6) and math.isclose(out.sum(), 1.0, rel_tol=1e-5)
    batch_out, batch_emb = infer_batch(net, [a, path], t, return_embedding=True)
    assert batch_out.shape == (2, 5) and batch_emb.shape == (2, 192)
    assert np.allclose(batch_out[1], infer_image(net, path, t)[0], atol=1e-5)
    with pytest.raises(ValueError, match="cannot read image"):
        infer_image(net, tmp_path / "missing.jpg", t)
