"""Images as a person sees them: high bit depths scaled (never saturated), EXIF orientation applied, and every
unreadable image (a decompression bomb too) refused with one line; `embed` over many images skips them."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.test_cli import one_line_error, ready  # noqa: F401 (fixture)
from tests.weights_env import CORE, hub  # noqa: F401 (fixture)
from zoo.__main__ import main
from zoo.inference import ImageError, infer_batch, infer_image, open_image

STATS = {"mean": [0.5] * 3, "std": [0.5] * 3}
TRANSFORM = zoo.classification_transform(32, STATS)


@pytest.fixture(scope="module")
def picture():
    """An 8-bit grayscale picture with every level 0..255 and structure in both directions."""
    rng = np.random.default_rng(7)
    a = rng.permutation(np.arange(256, dtype=np.uint8).repeat(6)).reshape(32, 48)
    a[:, :3] = 255  # a bright edge and a dark edge so saturation or a wrong scale shows
    a[:, -3:] = 0
    return a


def high_bit_depth(a8, mode):
    """The same picture as an image of ``mode``, holding the exact values that mode stores for it."""
    if mode == "I;16":
        return Image.fromarray(a8.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(a8.astype(np.int32) * 257)
    return Image.fromarray(a8.astype(np.float32) / 255)


@pytest.mark.parametrize("mode, suffix", [("I;16", "png"), ("I", "tif"), ("F", "tif")])
def test_high_bit_depth_equals_the_8bit_picture(picture, mode, suffix, tmp_path):
    eight = Image.fromarray(picture, "L")
    image = high_bit_depth(picture, mode)
    assert image.mode == mode
    assert torch.equal(TRANSFORM(image), TRANSFORM(eight))  # in memory, straight into the transform
    path = tmp_path / f"picture.{suffix}"
    image.save(path)
    opened = open_image(path)
    assert opened.mode == mode  # Pillow kept the bit depth; the transform scales it
    assert torch.equal(TRANSFORM(opened), TRANSFORM(eight))


def test_high_bit_depth_embedding_matches(picture, tmp_path):
    net = zoo.PEViT(zoo.PEConfig(patch_size=16, width=64, depth=1, heads=2, mlp_dim=128, image_size=32,
                                 cls_token=True, pool="attn", ln_post=True, layer_scale=False)).eval()
    eight = tmp_path / "eight.png"
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(picture, "L").save(eight)
    high_bit_depth(picture, "I;16").save(sixteen)
    assert np.array_equal(infer_image(net, sixteen, TRANSFORM), infer_image(net, eight, TRANSFORM))


@pytest.mark.parametrize("mode, values", [("F", (-0.5, 2.0)), ("F", (0.0, float("nan"))), ("I", (0, 70000)), ("I", (-5, 10))])
def test_high_bit_depth_out_of_range_is_refused(mode, values):
    a = np.array([[values[0], values[1]]] * 2, dtype=np.float32 if mode == "F" else np.int32)
    with pytest.raises(ImageError, match=f"mode {mode}.*will not guess"):
        TRANSFORM(Image.fromarray(a))


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.default_rng(1)
    upright = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))  # wide, as a person sees it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # tall, as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    assert Image.open(path).size == (30, 50)
    opened = open_image(path)
    assert opened.size == (50, 30) and np.array_equal(np.asarray(opened), np.asarray(upright))
    t = zoo.classification_transform((32, 48), STATS)
    assert torch.equal(t(Image.open(path)), t(upright))  # a PIL image handed to the transform is turned too
    assert torch.equal(t(opened), t(upright))  # and an image already turned is not turned twice


def bomb(path, side=20000):
    """A tiny PNG whose header claims side x side pixels (more than Pillow's decompression-bomb limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_clear_error(tmp_path):
    path = bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match=r"bomb\.png.*decompression bomb.*MAX_IMAGE_PIXELS") as err:
        open_image(path)
    assert "\n" not in str(err.value)
    net = zoo.create_model(CORE.name, device="meta")
    with pytest.raises(ImageError, match="decompression bomb"):
        infer_image(net, path, TRANSFORM)


def test_cli_bomb_and_bad_images(ready, tmp_path, capsys):
    good = ready[0]
    path = str(bomb(tmp_path / "bomb.png"))
    assert main(["features", CORE.name, path]) == 1
    assert "decompression bomb" in one_line_error(capsys)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    out = tmp_path / "emb"
    assert main(["embed", CORE.name, good, path, str(broken), ready[1], "--out", str(out)]) == 0
    assert "2 unreadable images" in capsys.readouterr().out
    errors = (out / "errors.txt").read_text().splitlines()
    assert len(errors) == 2 and "decompression bomb" in next(e for e in errors if path in e)
    assert any(str(broken) in e for e in errors)
    paths, rows = zoo.read_embeddings(out)
    assert paths == [good, ready[1]] and rows.shape == (2, CORE.config.width)


def test_infer_batch_refuses_a_single_path():
    net = zoo.create_model(CORE.name, device="meta")
    for single in ("a.jpg", b"a.jpg", Image.new("RGB", (4, 4))):
        with pytest.raises(TypeError, match="infer_image"):
            infer_batch(net, single, TRANSFORM)
