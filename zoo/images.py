"""Opening images the way a person sees them: EXIF orientation applied, high bit depths scaled to 8 bits,
and every unreadable image (missing, corrupt, a decompression bomb) refused with one ``ImageError`` line."""

from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageOps

ImageLike = str | os.PathLike | Image.Image
_ORIENTATION = 0x0112  # the EXIF tag: 1 is upright, 2-8 a mirror and/or rotation
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image that cannot be read or cannot be turned into the model's 8-bit RGB input."""


class VideoError(ImageError):
    """A video that cannot be read: missing, corrupt, truncated, without a video stream, empty, or an unknown codec."""


def upright(image: Image.Image) -> Image.Image:
    """``image`` as a viewer shows it: its EXIF orientation applied (the same image when it has none)."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block is ignored, as viewers do
        return image
    return image if orientation in (0, 1) else ImageOps.exif_transpose(image)


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image scaled to 8 bits ("L").

    16-bit modes (and mode "I", Pillow's mode for 16-bit files) map 0..65535 to 0..255; float images
    map 0.0..1.0 to 0..255. Values outside that range cannot be scaled without guessing and are refused.
    """
    a = np.asarray(image)
    if image.mode in _SIXTEEN_BIT:
        top = 65535.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        top = 1.0 if image.mode == "F" else 65535.0
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= top):
            what = "a float" if image.mode == "F" else "a 32-bit integer"
            raise ImageError(
                f"{what} image (mode {image.mode}) with values in [{lo:g}, {hi:g}]: the zoo scales mode "
                f"{image.mode} from 0..{top:g} to 8 bits and will not guess another range; convert it to 8-bit yourself"
            )
    return Image.fromarray(np.rint(a.astype(np.float64) * (255.0 / top)).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as upright 8-bit RGB: EXIF orientation applied, alpha dropped, grayscale, palette,
    CMYK and the like converted, 16-bit/32-bit/float grayscale scaled (never saturated) to 8 bits."""
    image = upright(image)
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        image = _to_8bit(image)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert a mode {image.mode} image to RGB ({e}); save it as an 8-bit RGB image") from None


def open_image(image: ImageLike) -> Image.Image:
    """A loaded, upright PIL image from a path (or a PIL image), or one ``ImageError`` line naming it and the cause.

    Refuses missing, unreadable and truncated files and decompression bombs (Pillow's
    ``DecompressionBombError``: more than twice ``PIL.Image.MAX_IMAGE_PIXELS``). The transform converts the result to RGB.
    """
    if isinstance(image, Image.Image):
        return upright(image)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"an image must be a path or a PIL image, got {type(image).__name__}")
    name = os.fspath(image)
    try:
        with Image.open(image) as im:
            im.load()
            return upright(im)
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"cannot read image {name!r}: it is a possible decompression bomb ({e}). If you trust it, raise "
            "PIL.Image.MAX_IMAGE_PIXELS before loading it"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as e:
        cause = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"cannot read image {name!r}: {cause}") from None


__all__ = ["ImageError", "ImageLike", "VideoError", "open_image", "to_rgb", "upright"]
