"""Preprocessing on the model's device, to keep a GPU fed (``zoo embed`` on CUDA).

On CUDA, DataLoader workers hand the main process 8-bit pixels, never float tensors: either the image
already resized by PIL (``pixel_transform``: the exact CPU pixels; scaling and normalising then happen on
the device, with the same float operations, so the inputs are the CPU path's to the bit), or, with
``--gpu-decode``, a JPEG's bytes and its EXIF orientation. Those are decoded a whole batch at once with
nvJPEG (``torchvision.io.decode_jpeg(..., device=device)``), turned upright (nvJPEG ignores EXIF),
resized on the device (bilinear with antialiasing, rounded to 8 bits as PIL does), and normalised. Pixels
then differ slightly from PIL's: another IDCT and another resampler.

Videos, where torchcodec is installed: workers only demux (``zoo.video.probe``, ``plan``), and the main
process decodes the planned frames with torchcodec's decoder on the device (NVDEC on CUDA).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112


def read_jpeg(path: str | os.PathLike) -> tuple[bytes, int] | None:
    """A JPEG file's bytes and EXIF orientation (1-8; 1 when absent or unreadable), or ``None`` when the
    file is not a JPEG (by its magic bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(JPEG_MAGIC):
        return None
    return data, exif_orientation(data)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of an encoded image (1 when it has none, or an unreadable one); reads headers only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 -- a broken header is the decoder's to report; EXIF is ignored as viewers do
        return 1
    return value if 1 <= value <= 8 else 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """An image [..., H, W] as a viewer shows it for EXIF ``orientation`` (what ``PIL.ImageOps.exif_transpose`` does)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def torchcodec_decoder():
    """torchcodec's ``VideoDecoder``, or ``None`` where torchcodec is absent or cannot load FFmpeg's libraries."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception:  # noqa: BLE001 -- ImportError, or its FFmpeg loader failing (RuntimeError, OSError)
        return None
    return VideoDecoder


def decode_video(path: str, indices: list[int], device: torch.device | str) -> torch.Tensor:
    """The frames at presentation ``indices`` as uint8 RGB [N, 3, H, W] on ``device`` (torchcodec, rotation applied)."""
    from zoo.images import VideoError

    try:
        decoder = torchcodec_decoder()(path, device=str(device), seek_mode="exact")
        return decoder.get_frames_at(indices).data
    except (RuntimeError, ValueError, IndexError) as e:
        raise VideoError(f"cannot decode video {path!r} on {device}: {' '.join(str(e).split())}") from None


def decode_jpegs(data: list[torch.Tensor], device: torch.device | str, orientations: list[int] | None = None) -> list[torch.Tensor]:
    """JPEG bytes (1-D uint8 CPU tensors) -> RGB uint8 images [3, H, W] on ``device``, decoded as one batch and
    turned upright by ``orientations`` (EXIF values; none applied when not given)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec's (same nvJPEG)
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return [orient(im, o) for im, o in zip(images, orientations or [1] * len(images))]


def resize_pixels(images: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """uint8 RGB images [3, h, w] (one device) -> uint8 [N, 3, H, W]: squash-resized like ``classification_transform``
    (bilinear, antialiased, rounded to 8 bits), images of one shape in one call."""
    size = tuple(size)
    out = torch.empty((len(images), 3, *size), dtype=torch.uint8, device=images[0].device)
    shapes: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        shapes.setdefault(tuple(image.shape[-2:]), []).append(k)
    for shape, ks in shapes.items():
        x = torch.stack([images[k] for k in ks])
        if shape != size:
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False).round_().clamp_(0, 255)
        out[ks] = x.to(torch.uint8)
    return out


def normalize(pixels: torch.Tensor, rgb_stats: dict) -> torch.Tensor:
    """uint8 images [..., 3, H, W] -> the model's float32 input: ``ToTensor`` and ``Normalize`` of
    ``classification_transform``, the same float operations in the same order (equal to the bit on any device)."""
    mean, std = _stats(tuple(rgb_stats["mean"]), tuple(rgb_stats["std"]), pixels.device)
    return pixels.float().div_(255).sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants on ``device``, made once (not two host-to-device copies per batch)."""
    return torch.tensor(mean, device=device).view(3, 1, 1), torch.tensor(std, device=device).view(3, 1, 1)


def pixel_transform(size: int | tuple[int, int]) -> Callable:
    """PIL image -> uint8 tensor [3, H, W]: ``classification_transform`` up to its ``ToTensor`` (upright RGB, resized)."""
    import torchvision.transforms as T

    from zoo.images import to_rgb

    h, w = (size, size) if isinstance(size, int) else size
    return T.Compose([to_rgb, T.Resize((h, w), interpolation=T.InterpolationMode.BILINEAR), T.PILToTensor()])


def decode_batch(batch, paths, size: tuple[int, int], device: torch.device, transform: Callable) -> tuple[list, torch.Tensor | None]:
    """A ``zoo.collection.media.Batch`` -> ``(items, pixels)``: ``items`` ``(index, frame count, rows, reason)``
    in order and their frames' uint8 pixels [F, 3, H, W] on ``device`` (``None`` when no item is readable).

    JPEGs are decoded together when possible, one by one when the batch fails, and through PIL
    (``transform``, a ``pixel_transform``) when the device's decoder refuses a file, which then lands in
    ``errors.txt`` only if PIL refuses it too.
    """
    from zoo.inference import open_image

    items, parts = [], {}
    jpegs = [k for k, (_, kind, _, _, _) in enumerate(batch.items) if kind == "jpeg"]
    decoded: dict[int, torch.Tensor | None] = {}
    if jpegs:
        data = [batch.blob[a:b] for k in jpegs for a, b, _ in [batch.items[k][2]]]
        turns = [batch.items[k][2][2] for k in jpegs]
        try:
            images = decode_jpegs(data, device, turns)
        except RuntimeError:
            images = []
            for d, o in zip(data, turns):
                try:
                    images.append(decode_jpegs([d], device, [o])[0])
                except RuntimeError:
                    images.append(None)
        good = [(k, im) for k, im in zip(jpegs, images) if im is not None]
        if good:
            resized = resize_pixels([im for _, im in good], size)
            decoded = {k: resized[j:j + 1] for j, (k, _) in enumerate(good)}
        decoded.update({k: None for k, im in zip(jpegs, images) if im is None})
    at = 0
    for k, (i, kind, payload, recs, reason) in enumerate(batch.items):
        x = None
        try:
            if kind == "frames":
                x, at = batch.frames[at:at + payload].to(device, non_blocking=True), at + payload
            elif kind == "jpeg":
                x = decoded[k] if decoded[k] is not None else transform(open_image(paths[i])).unsqueeze(0).to(device)
            elif kind == "plan":
                x = resize_pixels(list(decode_video(paths[i], payload, device)), size)
        except Exception as e:  # noqa: BLE001 -- unreadable on every path: a line of errors.txt
            x, recs, reason = None, [], f"{type(e).__name__}: {e}"
        if x is None:
            items.append((i, 0, [], reason))
        else:
            items.append((i, len(x), recs, None))
            parts[k] = x
    pixels = torch.cat(list(parts.values())) if parts else None
    return items, pixels


def prefetch(batches: Iterator, work: Callable, device: torch.device, depth: int = 2) -> Iterator:
    """``work(batch)`` of each batch, done up to ``depth`` batches ahead in a thread (on its own CUDA stream on a
    GPU), so that preparing the next batches overlaps the model's work on this one. Order is kept; an error in
    the thread is raised here. ``work`` returns ``(items, tensor or None)``."""
    import queue
    import threading

    cuda = torch.device(device).type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                if cuda:
                    with torch.cuda.stream(side):
                        out = work(batch)
                    event = torch.cuda.Event()
                    event.record(side)
                else:
                    out, event = work(batch), None
                ready.put((out, event, None))
        except BaseException as e:  # noqa: BLE001 -- raised again in the consumer
            ready.put((None, None, e))
            return
        ready.put((done, None, None))

    thread = threading.Thread(target=run, name="zoo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            out, event, error = ready.get()
            if error is not None:
                raise error
            if out is done:
                return
            if event is not None:  # the model's stream waits for the work; its tensor is now used there too
                main = torch.cuda.current_stream(device)
                main.wait_event(event)
                if out[1] is not None and out[1].is_cuda:
                    out[1].record_stream(main)
            yield out
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer finish its put
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


__all__ = ["JPEG_MAGIC", "decode_batch", "decode_jpegs", "decode_video", "exif_orientation", "normalize", "orient",
           "pixel_transform", "prefetch", "read_jpeg", "resize_pixels", "torchcodec_decoder"]
