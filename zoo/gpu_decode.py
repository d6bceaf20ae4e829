"""JPEG and video decoding and resizing on the model's device, to keep a GPU fed (``zoo embed`` on CUDA).

DataLoader workers only read the files' bytes; the main process decodes a whole batch at once with
``torchvision.io.decode_jpeg(..., device=device)`` (nvJPEG on CUDA), applies the EXIF orientation, resizes
each image on the same device (bilinear with antialiasing, rounded to 8 bits as PIL does) and normalises
it. A file the batch decoder refuses falls back to the exact CPU path (PIL), and an unreadable one
becomes an error, as on the CPU. Pixels differ slightly from PIL's: another IDCT and another resampler.

Videos, where torchcodec is installed: workers only demux (``zoo.video.probe``, ``plan``), and the main
process decodes the planned frames with torchcodec's decoder on the device (NVDEC on CUDA).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

JPEG_MAGIC = b"\xff\xd8\xff"


def read_jpeg(path: str | os.PathLike) -> torch.Tensor | None:
    """The bytes of a JPEG file as a uint8 tensor, or ``None`` when the file is not a JPEG (by its magic bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(JPEG_MAGIC):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


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


def decode_jpegs(data: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """JPEG bytes -> upright RGB uint8 images [3, H, W] on ``device``, decoded as one batch."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)


def resize_normalize(image: torch.Tensor, size: tuple[int, int], rgb_stats: dict) -> torch.Tensor:
    """A uint8 RGB image [3, h, w] -> the model's input [3, H, W] on its device: squash-resized like
    ``classification_transform`` (bilinear, antialiased, rounded to 8 bits), scaled to [0, 1], normalised."""
    x = image.unsqueeze(0).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).round_().clamp_(0, 255)
    mean, std = _stats(tuple(rgb_stats["mean"]), tuple(rgb_stats["std"]), x.device)
    return ((x / 255.0 - mean) / std)[0]


@functools.lru_cache(maxsize=8)
def _stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants on ``device``, made once (not two host-to-device copies per image)."""
    return torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1)


def decode_batch(items: list, paths, size: tuple[int, int], rgb_stats: dict, device: torch.device, transform) -> list:
    """Replace the raw JPEG entries of a ``MediaFiles`` batch (1-D uint8 tensors) by model inputs [1, 3, H, W] on ``device``.

    Decoded together when possible; one by one when the batch fails; through PIL (``transform``) when the
    device's decoder refuses a file, which then lands in ``errors.txt`` only if PIL refuses it too.
    """
    from zoo.inference import open_image

    items = list(items)
    for k, (i, x, recs, _) in enumerate(items):
        if isinstance(x, list):  # a planned video: the frame indices of its rows, in row order
            try:
                frames = decode_video(paths[i], x, device)
                items[k] = (i, torch.stack([resize_normalize(f, size, rgb_stats) for f in frames]), recs, None)
            except Exception as e:  # noqa: BLE001 -- a line of errors.txt
                items[k] = (i, None, [], f"{type(e).__name__}: {e}")
    raw = [k for k, it in enumerate(items) if isinstance(it[1], torch.Tensor) and it[1].ndim == 1]
    if not raw:
        return items
    data = [items[k][1] for k in raw]
    try:
        images = decode_jpegs(data, device)
    except RuntimeError:
        images = []
        for d in data:
            try:
                images.append(decode_jpegs([d], device)[0])
            except RuntimeError:
                images.append(None)
    for k, image in zip(raw, images):
        i, _, recs, _ = items[k]
        try:
            x = resize_normalize(image, size, rgb_stats) if image is not None else transform(open_image(paths[i])).to(device)
            items[k] = (i, x.unsqueeze(0), recs, None)
        except Exception as e:  # noqa: BLE001 -- unreadable on both paths: a line of errors.txt
            items[k] = (i, None, [], f"{type(e).__name__}: {e}")
    return items


def prefetch_decoded(batches: Iterator[list], paths, size: tuple[int, int], rgb_stats: dict, device: torch.device,
                     transform, depth: int = 2) -> Iterator[list]:
    """``decode_batch`` of each batch, done up to ``depth`` batches ahead in a thread (on its own CUDA stream on a
    GPU), so that decoding the next batches overlaps the model's work on this one. Order is kept; an error in
    the thread is raised here."""
    import queue
    import threading

    cuda = torch.device(device).type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for items in batches:
                if stop.is_set():
                    return
                if cuda:
                    with torch.cuda.stream(side):
                        items = decode_batch(items, paths, size, rgb_stats, device, transform)
                    event = torch.cuda.Event()
                    event.record(side)
                else:
                    items, event = decode_batch(items, paths, size, rgb_stats, device, transform), None
                ready.put((items, event, None))
        except BaseException as e:  # noqa: BLE001 -- raised again in the consumer
            ready.put((None, None, e))
            return
        ready.put((done, None, None))

    thread = threading.Thread(target=work, name="zoo-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            items, event, error = ready.get()
            if error is not None:
                raise error
            if items is done:
                return
            if event is not None:  # the model's stream waits for the decode; its tensors are now used there too
                main = torch.cuda.current_stream(device)
                main.wait_event(event)
                for item in items:
                    if isinstance(item[1], torch.Tensor) and item[1].is_cuda:
                        item[1].record_stream(main)
            yield items
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer finish its put
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


__all__ = ["JPEG_MAGIC", "decode_batch", "prefetch_decoded", "decode_jpegs", "decode_video", "read_jpeg", "resize_normalize", "torchcodec_decoder"]
