"""Videos (and GPU-decoded JPEGs) in a collection: rows made of several frames, and the record of each row.

A video gives one row, or one per ``segment_seconds`` window: the mean of its sampled frames' embeddings
(``zoo.video``: Meta's sampling and pooling). Its shard ``.json`` then holds, beside ``paths``, a
``segments`` list with one entry per row: ``null`` for an image, ``{"start", "end", "frames"}`` for a video.
``read_row_info`` returns those records; ``search`` puts ``start`` and ``end`` on video hits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from zoo.collection.read import read_manifest
from zoo.collection.store import read_json, write_shard
from zoo.inference import open_image
from zoo.video import DEFAULT_FRAMES, is_video_name, plan, pool, probe, sample

log = logging.getLogger("zoo")


def video_settings(paths: Sequence[str], frames: int, segment_seconds: float | None, normalize_frames: bool) -> dict | None:
    """The ``video`` entry of a collection's settings (``None`` when no input is a video: images only, as before)."""
    if frames < 1:
        raise ValueError(f"--frames must be at least 1, got {frames}")
    if segment_seconds is not None and not segment_seconds > 0:
        raise ValueError(f"--segment-seconds must be positive, got {segment_seconds}")
    if not any(is_video_name(p) for p in paths):
        return None
    return {"frames": frames, "segment_seconds": segment_seconds, "normalize_frames": normalize_frames}


class MediaFiles(Dataset):
    """``(index, frames, rows, reason or None)`` per path; ``rows`` is one record a row.

    An image is one row of one frame (record ``None``); a video is one row per segment of ``frames`` frames each.
    ``frames`` is a tensor [F, 3, H, W] made by ``transform`` (float inputs, or uint8 pixels with a
    ``zoo.gpu_decode.pixel_transform``), or ``None`` when unreadable. With ``raw_jpeg`` a JPEG file comes back as
    ``(bytes, EXIF orientation)``, and with ``planned_video`` a video as the list of its frame indices (demuxed,
    not decoded), for decoding on the model's device.
    """

    def __init__(self, paths: Sequence[str], transform, frames: int = DEFAULT_FRAMES, segment_seconds: float | None = None,
                 raw_jpeg: bool = False, planned_video: bool = False) -> None:
        self.paths, self.transform, self.frames, self.segment_seconds = paths, transform, frames, segment_seconds
        self.raw_jpeg, self.planned_video = raw_jpeg, planned_video

    def __len__(self) -> int:
        return len(self.paths)

    def _convert(self, rgb: np.ndarray) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.fromarray(rgb))

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            if is_video_name(path) and self.planned_video:
                segments = plan(probe(path), self.frames, self.segment_seconds)
                return i, [k for s in segments for k in s.indices], [s.info() for s in segments], None
            if is_video_name(path):
                segments = sample(path, self.frames, self.segment_seconds, convert=self._convert)
                return i, torch.stack([f for s in segments for f in s.frames]), [s.info() for s in segments], None
            if self.raw_jpeg:
                from zoo.gpu_decode import read_jpeg

                jpeg = read_jpeg(path)
                if jpeg is not None:
                    return i, jpeg, [None], None
            return i, self.transform(open_image(path)).unsqueeze(0), [None], None
        except Exception as e:  # noqa: BLE001 -- any decode failure becomes a line of errors.txt
            return i, None, [], f"{type(e).__name__}: {e}"


@dataclass
class Batch:
    """One DataLoader batch of ``MediaFiles`` items, in two shared-memory blocks rather than one per file.

    ``items``: ``(index, kind, payload, rows, reason)`` in order, ``kind`` one of ``"frames"`` (payload: how
    many of ``frames`` are its own, in order), ``"jpeg"`` (payload: ``(start, end, orientation)`` of its bytes
    in ``blob``), ``"plan"`` (payload: frame indices to decode) and ``None`` (unreadable: ``reason``).
    """

    items: list
    frames: torch.Tensor | None
    blob: torch.Tensor | None

    def pin_memory(self) -> Batch:
        """Page-locked frames, for asynchronous copies to the GPU (called by the DataLoader's pinning thread)."""
        if self.frames is not None:
            self.frames = self.frames.pin_memory()
        return self

    def ready(self) -> tuple[list, torch.Tensor | None]:
        """``(items, frames)`` with items ``(index, frame count, rows, reason)``, when no item needs decoding."""
        return [(i, payload if kind == "frames" else 0, rows, reason) for i, kind, payload, rows, reason in self.items], self.frames


def _collate(items) -> Batch:
    """``MediaFiles`` items -> a ``Batch`` (runs in the DataLoader worker)."""
    out, frames, data, at = [], [], [], 0
    for i, x, rows, reason in items:
        if isinstance(x, torch.Tensor):
            out.append((i, "frames", len(x), rows, None))
            frames.append(x)
        elif isinstance(x, tuple):
            out.append((i, "jpeg", (at, at + len(x[0]), x[1]), rows, None))
            data.append(x[0])
            at += len(x[0])
        elif isinstance(x, list):
            out.append((i, "plan", x, rows, None))
        else:
            out.append((i, None, None, [], reason))
    blob = torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8) if data else None
    return Batch(out, torch.cat(frames) if frames else None, blob)


def _torchcodec_here() -> bool:
    from zoo.gpu_decode import torchcodec_decoder

    return torchcodec_decoder() is not None


def embed_media_shards(run, paths, shards, out: Path, base: int, shard_size: int, batch_size: int, workers: int | None, transform,
                       dev: torch.device, dtype: torch.dtype, normalize: bool, dim: int, store_dtype: str, progress: bool,
                       video: dict | None, size: tuple[int, int], rgb_stats: dict, device_decode: bool = False) -> None:
    """Embed and write ``shards`` of ``paths`` (shard ``base`` holds ``paths[:shard_size]``) holding videos and/or images: frames through ``run`` in batches of
    ``batch_size``, each video row the pooled mean of its frames.

    On CUDA, or with ``device_decode``, workers make 8-bit pixels and the device normalises them
    (``zoo.gpu_decode``), a batch ahead in a thread; with ``device_decode`` JPEGs, and videos where torchcodec
    is installed, are also decoded and resized on ``dev``. Otherwise workers run ``transform`` (the CPU path).
    """
    from tqdm.auto import tqdm

    from zoo.gpu_decode import decode_batch, pixel_transform, prefetch
    from zoo.gpu_decode import normalize as normalize_pixels

    frames = video["frames"] if video else 1
    per_batch = max(1, batch_size // frames) if video else batch_size
    batches, owners = [], []
    for s in shards:
        idx = list(range((s - base) * shard_size, min((s - base + 1) * shard_size, len(paths))))
        for b in range(0, len(idx), per_batch):
            batches.append(idx[b:b + per_batch])
            owners.append(s)
    if not batches:
        return
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    pixels = device_decode or dev.type == "cuda"
    if pixels:
        transform = pixel_transform(size)
    planned = device_decode and video is not None and _torchcodec_here()
    dataset = MediaFiles(paths, transform, frames, video["segment_seconds"] if video else None, raw_jpeg=device_decode,
                         planned_video=planned)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                        pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None)

    def prepare(batch: Batch) -> tuple[list, torch.Tensor | None]:
        items, x = decode_batch(batch, paths, size, dev, transform) if device_decode else batch.ready()
        return items, (normalize_pixels(x.to(dev, non_blocking=True), rgb_stats) if pixels and x is not None else x)

    prepared = prefetch(iter(loader), prepare, dev) if pixels else map(prepare, loader)
    normalize_frames = bool(video and video["normalize_frames"])
    left = {s: owners.count(s) for s in shards}
    start, done = time.perf_counter(), 0
    rows: list[np.ndarray] = []
    good: list[str] = []
    records: list[dict | None] = []
    bad: list[tuple[str, str]] = []
    with tqdm(total=sum(map(len, batches)), unit="file", disable=not progress, desc="embed", smoothing=0.1) as bar:
        for (items, x), s in zip(prepared, owners):
            bad.extend((paths[i], reason) for i, n, _, reason in items if not n)
            if x is not None:
                with torch.inference_mode():
                    y = torch.cat([run(x[a:a + batch_size].to(dev, dtype, non_blocking=True)).float()
                                   for a in range(0, len(x), batch_size)])
                    pooled, at = [], 0
                    for i, n, recs, _ in items:
                        for rec in recs:
                            k = 1 if rec is None else frames
                            pooled.append(y[at] if rec is None else pool(y[at:at + k], normalize_frames))
                            at += k
                        good.extend(paths[i] for _ in recs)
                        records.extend(recs)
                    y = torch.stack(pooled)
                    if normalize:
                        y = F.normalize(y, dim=-1)
                rows.append(y.to(getattr(torch, store_dtype)).cpu().numpy())
            bar.update(len(items))
            done += len(items)
            left[s] -= 1
            if left[s] == 0:
                stacked = np.concatenate(rows) if rows else np.zeros((0, dim), store_dtype)
                write_shard(out, s, stacked, good, bad, segments=records if video else None)
                rows, good, records, bad = [], [], [], []
    seconds = time.perf_counter() - start
    unit = ("files", "files") if video else ("images", "img")  # images only: the same line as the plain image path
    log.info(f"embedded {done} {unit[0]} in {seconds:.1f} s ({done / seconds:.2f} {unit[1]}/s)")


def shard_records(directory: str | os.PathLike, manifest: dict[str, Any], shard: int) -> list[dict[str, Any]]:
    """One record per row of one shard: ``path``, and for a video row ``start``, ``end`` and ``frames``."""
    meta = read_json(Path(directory) / manifest["shards"][shard]["paths"])
    segments = meta.get("segments") or [None] * len(meta["paths"])
    return [{"path": p} if seg is None else {"path": p, **seg} for p, seg in zip(meta["paths"], segments)]


def read_row_info(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per row of a finished collection, in row order (``read_embeddings``'s order).

    Each holds ``path``; a video row also ``start`` and ``end`` (seconds from the first frame) and
    ``frames`` (the 0-based presentation indices of the frames pooled into it).
    """
    manifest = read_manifest(directory)
    return [r for s in range(len(manifest["shards"])) for r in shard_records(directory, manifest, s)]


def with_times(directory: str | os.PathLike, manifest: dict[str, Any], hits: list, offsets: np.ndarray, shard_of: np.ndarray) -> list:
    """``hits`` (``search.Hit``) with ``start`` and ``end`` set for the video rows among them."""
    from dataclasses import replace

    records = {s: shard_records(directory, manifest, s) for s in set(shard_of.tolist())}
    out = []
    for hit, s in zip(hits, shard_of):
        rec = records[s][hit.row - int(offsets[s])]
        out.append(replace(hit, start=rec["start"], end=rec["end"]) if "start" in rec else hit)
    return out


__all__ = ["Batch", "MediaFiles", "embed_media_shards", "read_row_info", "shard_records", "video_settings", "with_times"]
