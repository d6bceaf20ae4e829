"""Videos the way Meta evaluated PE on them: a few frames sampled evenly, each embedded, the embeddings averaged.

Frame sampling follows ``apps/pe/clip_benchmark/datasets/video_classification_dataset.py`` (and its
retrieval twin) in ``facebookresearch/perception_models``: of a video's ``T`` frames, ``N`` (default 8)
are taken at indices ``int(i * (T - 1) / (N - 1))`` for ``i`` in ``0..N-1`` (the middle frame ``T // 2``
when ``N == 1``). Pooling follows ``CLIP.encode_video`` in ``core/vision_encoder/pe.py``: the mean of the
per-frame embeddings, not normalised per frame (the Kinetics zero-shot path; the retrieval path passes
``normalize=True`` and averages unit vectors: ``normalize_frames=True`` here).

Demuxing and decoding go through PyAV (``pip install "pe-zoo[video]"``); torchcodec gives the same pixels
(``backend="torchcodec"``) and decodes on the GPU (``zoo.gpu_decode``), but was slower on the CPU where measured. Frames come out in presentation order,
as 8-bit RGB, upright (the stream's display-matrix rotation applied), with their timestamps in seconds
from the first frame. Every unreadable video raises ``VideoError`` (an ``ImageError``) naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from zoo.images import VideoError


DEFAULT_FRAMES = 8  # apps/pe/clip_benchmark/cli.py: --num-frames default 8
TORCHCODEC_CHUNK = 32  # frames torchcodec decodes at once
Backend = Literal["pyav", "torchcodec"]
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp", ".ogv",
})


def is_video_name(path: str | os.PathLike) -> bool:
    """Whether a file name has one of the common video extensions (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def sample_indices(count: int, num_frames: int = DEFAULT_FRAMES) -> list[int]:
    """Meta's evaluation rule: ``num_frames`` indices spread evenly over ``count`` frames, first and last included.

    One frame: the middle one (``count // 2``). Indices repeat when ``num_frames > count``, as in Meta's code.
    """
    if num_frames < 1:
        raise ValueError(f"the number of frames must be at least 1, got {num_frames}")
    if count < 1:
        raise ValueError("cannot sample frames from an empty video")
    if num_frames == 1:
        return [count // 2]
    return [int(i * (count - 1) / (num_frames - 1)) for i in range(num_frames)]


@dataclass(frozen=True)
class VideoInfo:
    """What demuxing (no decoding) tells of a video: its frames' timestamps in presentation order and its duration."""

    path: str
    timestamps: np.ndarray  # seconds from the first frame, one per frame, ascending
    duration: float  # seconds: the last frame's timestamp plus its duration
    pts: np.ndarray  # the stream's own timestamps (time-base units), one per frame, ascending (repeats possible)

    @property
    def frames(self) -> int:
        return len(self.timestamps)


@dataclass
class Segment:
    """A window ``[start, end)`` seconds of a video and the frames sampled in it (0-based presentation indices)."""

    start: float
    end: float
    indices: list[int]
    timestamps: list[float]
    frames: list[Any] = field(default_factory=list)  # decoded frames (RGB arrays [H, W, 3], or what `convert` made)

    def info(self) -> dict[str, Any]:
        """``start``, ``end`` and ``frames`` (the indices), as stored in a collection's row record."""
        return {"start": round(self.start, 6), "end": round(self.end, 6), "frames": list(self.indices)}


def _av(path: str):
    try:
        import av
    except ImportError:
        raise VideoError(f'cannot read video {path!r}: videos need PyAV, pip install "pe-zoo[video]"') from None
    return av


def _fail(path: str, cause: object) -> VideoError:
    text = " ".join(str(cause).split()) or type(cause).__name__
    return VideoError(f"cannot read video {path!r}: {text}")


def _open(path: str):
    av = _av(path)
    if not os.path.isfile(path):
        raise VideoError(f"cannot read video {path!r}: no such file")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise _fail(path, e) from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"cannot read video {path!r}: it holds no video stream (audio only?)")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """Demux ``path`` (cheap: no decoding) into frame timestamps and duration; ``VideoError`` if unreadable."""
    path = os.fspath(path)
    av = _av(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.codec is None:
            raise VideoError(f"cannot read video {path!r}: unknown codec")
        base = float(stream.time_base) if stream.time_base else 1.0
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        stamps, durations = [], {}
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            t = packet.pts if packet.pts is not None else packet.dts
            if t is None:
                t = len(stamps)  # no timing at all: frame order is all there is
            stamps.append(t)
            durations[t] = packet.duration or 0
    except av.FFmpegError as e:
        raise _fail(path, e) from None
    finally:
        container.close()
    if not stamps:
        raise VideoError(f"cannot read video {path!r}: it holds no video frames")
    pts = np.sort(np.asarray(stamps, dtype=np.int64), kind="stable")
    seconds = np.round((pts - pts[0]) * base, 6)  # microseconds: window bounds compare equal where they should
    last = durations.get(int(pts[-1]), 0) * base
    if last <= 0:
        step = np.diff(seconds)
        last = float(np.median(step)) if len(step) else (1.0 / rate if rate > 0 else 0.0)
    return VideoInfo(path, seconds, round(float(seconds[-1] + last), 6), pts)


def decode(
    path: str | os.PathLike, indices: Sequence[int], convert: Callable[[np.ndarray], Any] | None = None,
    info: VideoInfo | None = None, backend: Backend = "pyav",
) -> dict[int, Any]:
    """The frames at presentation ``indices`` of ``path``: ``{index: frame}``.

    A frame is an upright RGB array [H, W, 3] (uint8), or ``convert(array)`` when given (applied as frames
    are decoded, so only the converted frames are kept). ``backend``: ``pyav`` (one decoding pass, frames
    matched to indices by their timestamps from ``info``, probed here when not given) or ``torchcodec``
    (its exact seek mode; measured slower on the CPU, so only on request). ``VideoError`` if a frame cannot be decoded.
    """
    path = os.fspath(path)
    wanted = set(int(i) for i in indices)
    if not wanted:
        return {}
    if backend == "torchcodec":
        from zoo.gpu_decode import decode_video

        order, found = sorted(wanted), {}
        for a in range(0, len(order), TORCHCODEC_CHUNK):  # bounded memory: frames are converted chunk by chunk
            chunk = order[a:a + TORCHCODEC_CHUNK]
            for k, frame in zip(chunk, decode_video(path, chunk, "cpu")):
                rgb = frame.permute(1, 2, 0).numpy()
                found[k] = convert(rgb) if convert else rgb
        return found
    return _decode_pyav(path, wanted, convert, info or probe(path))


def _decode_pyav(path: str, wanted: set[int], convert: Callable[[np.ndarray], Any] | None, info: VideoInfo) -> dict[int, Any]:
    av = _av(path)
    first = {}  # a timestamp's first presentation index; a repeated timestamp takes the next ones in turn
    for i, p in enumerate(info.pts.tolist()):
        first.setdefault(p, i)
    seen: dict[int, int] = {}
    found: dict[int, Any] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = max(wanted)
        for n, frame in enumerate(container.decode(stream)):
            k = n
            if frame.pts is not None and frame.pts in first:
                k = first[frame.pts] + seen.get(frame.pts, 0)
                seen[frame.pts] = seen.get(frame.pts, 0) + 1
            if k in wanted and k not in found:
                rgb = frame.to_ndarray(format="rgb24")
                turns = (int(round(frame.rotation or 0)) // 90) % 4
                if turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
                found[k] = convert(rgb) if convert else rgb
            if k >= last:
                break
    except av.FFmpegError as e:
        raise _fail(path, e) from None
    finally:
        container.close()
    missing = sorted(wanted - found.keys())
    if missing:
        raise VideoError(f"cannot read video {path!r}: frame {missing[0]} could not be decoded (truncated or corrupt file)")
    return found


def plan(info: VideoInfo, num_frames: int = DEFAULT_FRAMES, segment_seconds: float | None = None) -> list[Segment]:
    """The segments of a video and the frames each samples (not decoded yet).

    Without ``segment_seconds``: one segment, the whole video. With it: consecutive windows of that many
    seconds tiling ``[0, duration]``; a window holding no frame is merged into the one before it. In each
    window, ``num_frames`` frames are picked by Meta's rule among the frames whose timestamp falls in it.
    """
    t = info.timestamps
    if segment_seconds is None:
        bounds = [(0.0, info.duration)]
    else:
        if not segment_seconds > 0:
            raise ValueError(f"segment seconds must be positive, got {segment_seconds}")
        n = max(1, math.ceil(info.duration / segment_seconds - 1e-9))
        bounds = [(round(j * segment_seconds, 6), min(round((j + 1) * segment_seconds, 6), info.duration)) for j in range(n)]
    segments: list[Segment] = []
    for start, end in bounds:
        inside = np.flatnonzero((t >= start) & (t < end)) if end < info.duration else np.flatnonzero(t >= start)
        if len(inside):  # the first window holds frame 0; a later one without frames is covered by the one before
            picked = [int(inside[i]) for i in sample_indices(len(inside), num_frames)]
            segments.append(Segment(start, end, picked, [float(t[i]) for i in picked]))
    for segment, after in zip(segments, segments[1:]):
        segment.end = after.start
    segments[-1].end = info.duration
    return segments


def sample(
    path: str | os.PathLike, num_frames: int = DEFAULT_FRAMES, segment_seconds: float | None = None,
    convert: Callable[[np.ndarray], Any] | None = None, backend: Backend = "pyav",
) -> list[Segment]:
    """Probe, plan and decode: the video's segments (one without ``segment_seconds``) with their frames filled in."""
    info = probe(path)
    segments = plan(info, num_frames, segment_seconds)
    frames = decode(path, [i for s in segments for i in s.indices], convert, info, backend)
    for s in segments:
        s.frames = [frames[i] for i in s.indices]
    return segments


def pool(features: torch.Tensor, normalize_frames: bool = False) -> torch.Tensor:
    """Meta's video embedding from per-frame embeddings [..., N, D]: their mean over N (of unit vectors if ``normalize_frames``)."""
    if normalize_frames:
        features = torch.nn.functional.normalize(features, dim=-1)
    return features.mean(dim=-2)


@dataclass
class VideoRow:
    """One video embedding: the window ``[start, end)`` seconds, the frame indices used, and the pooled ``embedding``."""

    start: float
    end: float
    frames: list[int]
    embedding: np.ndarray


def embed_video(
    net: torch.nn.Module,
    path: str | os.PathLike,
    transform: Callable,
    *,
    what: Literal["embedding", "clip"] = "embedding",
    num_frames: int = DEFAULT_FRAMES,
    segment_seconds: float | None = None,
    normalize_frames: bool = False,
    batch_size: int = 32,
) -> list[VideoRow]:
    """Embed one video with a ``PEViT``: one row (or one per ``segment_seconds`` window), pooled as Meta does.

    ``transform`` is the model's own preprocessing (``zoo.classification_transform``), applied to each frame;
    ``what``: ``embedding`` (pooled features) or ``clip`` (``net.clip_embedding``, PE-Core).
    """
    from PIL import Image

    method = net.clip_embedding if what == "clip" else net.embedding
    p = next(net.parameters())
    segments = sample(path, num_frames, segment_seconds, convert=lambda a: transform(Image.fromarray(a)))
    x = torch.stack([f for s in segments for f in s.frames])
    with torch.inference_mode():
        y = torch.cat([method(x[i:i + batch_size].to(p.device, p.dtype)).float() for i in range(0, len(x), batch_size)])
    y = pool(y.reshape(len(segments), num_frames, -1), normalize_frames).cpu().numpy()
    return [VideoRow(s.start, s.end, list(s.indices), y[j]) for j, s in enumerate(segments)]


def zero_shot_classify_video(
    model: torch.nn.Module, frames: torch.Tensor, classifier: torch.Tensor, normalize_frames: bool = False
) -> torch.Tensor:
    """Class probabilities [C] of one video from its preprocessed frames [N, 3, H, W] (a ``PECLIP`` and a
    ``zero_shot_classifier``): Meta's Kinetics zero-shot path, the pooled frame embeddings normalised, then scaled logits."""
    with torch.inference_mode():
        video = torch.nn.functional.normalize(pool(model.encode_image(frames).float(), normalize_frames), dim=-1)
        logits = model.logit_scale.exp().float() * video @ classifier.float()
    return logits.softmax(dim=-1)


__all__ = [
    "Backend", "DEFAULT_FRAMES", "Segment", "VIDEO_EXTENSIONS", "VideoError", "VideoInfo", "VideoRow", "decode", "embed_video",
    "is_video_name", "plan", "pool", "probe", "sample", "sample_indices", "zero_shot_classify_video",
]
