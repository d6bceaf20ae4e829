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
    """``(index, frames [F, 3, H, W] or None, rows, reason or None)`` per path; ``rows`` is one record a row.

    An image is one row of one frame (record ``None``); a video is one row per segment of ``frames`` frames each.
    With ``raw_jpeg`` a JPEG file comes back as its bytes (a uint8 tensor), and with ``planned_video`` a video
    as the list of its frame indices (demuxed, not decoded), for decoding on the model's device.
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

                data = read_jpeg(path)
                if data is not None:
                    return i, data, [None], None
            return i, self.transform(open_image(path)).unsqueeze(0), [None], None
        except Exception as e:  # noqa: BLE001 -- any decode failure becomes a line of errors.txt
            return i, None, [], f"{type(e).__name__}: {e}"


def _torchcodec_here() -> bool:
    from zoo.gpu_decode import torchcodec_decoder

    return torchcodec_decoder() is not None


def _collate(items):
    return items


def embed_media_shards(run, paths, shards, out: Path, base: int, shard_size: int, batch_size: int, workers: int | None, transform,
                       dev: torch.device, dtype: torch.dtype, normalize: bool, dim: int, store_dtype: str, progress: bool,
                       video: dict | None, size: tuple[int, int] | None = None, rgb_stats: dict | None = None) -> None:
    """Embed and write ``shards`` of ``paths`` (shard ``base`` holds ``paths[:shard_size]``) holding videos and/or images: frames through ``run`` in batches of
    ``batch_size``, each video row the pooled mean of its frames. With ``size`` (device decoding): JPEGs, and
    videos where torchcodec is installed, decoded and resized on ``dev`` (``zoo.gpu_decode``)."""
    from tqdm.auto import tqdm

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
    planned = size is not None and video is not None and _torchcodec_here()
    dataset = MediaFiles(paths, transform, frames, video["segment_seconds"] if video else None, raw_jpeg=size is not None,
                         planned_video=planned)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                        pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None)
    normalize_frames = bool(video and video["normalize_frames"])
    left = {s: owners.count(s) for s in shards}
    start, done = time.perf_counter(), 0
    rows: list[np.ndarray] = []
    good: list[str] = []
    records: list[dict | None] = []
    bad: list[tuple[str, str]] = []
    decoded = iter(loader)
    if size is not None:  # device decoding runs one batch ahead, in a thread, overlapping the model's batch
        from zoo.gpu_decode import prefetch_decoded

        decoded = prefetch_decoded(decoded, paths, size, rgb_stats, dev, transform)
    with tqdm(total=sum(map(len, batches)), unit="file", disable=not progress, desc="embed", smoothing=0.1) as bar:
        for items, s in zip(decoded, owners):
            items_ok = [it for it in items if it[1] is not None]
            bad.extend((paths[i], reason) for i, x, _, reason in items if x is None)
            if items_ok:
                x = torch.cat([it[1].to(dev) for it in items_ok])
                with torch.inference_mode():
                    y = torch.cat([run(x[a:a + batch_size].to(dev, dtype, non_blocking=True)).float()
                                   for a in range(0, len(x), batch_size)])
                    pooled, at = [], 0
                    for _, _, recs, _ in items_ok:
                        for rec in recs:
                            n = 1 if rec is None else frames
                            pooled.append(y[at] if rec is None else pool(y[at:at + n], normalize_frames))
                            at += n
                    y = torch.stack(pooled)
                    if normalize:
                        y = F.normalize(y, dim=-1)
                rows.append(y.to(getattr(torch, store_dtype)).cpu().numpy())
                for i, _, recs, _ in items_ok:
                    good.extend(paths[i] for _ in recs)
                    records.extend(recs)
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


__all__ = ["MediaFiles", "embed_media_shards", "read_row_info", "shard_records", "video_settings", "with_times"]
