"""Video on the CPU: decoding (PyAV against torchcodec) and embedding throughput end to end against the model alone.

    PYTHONPATH=$PWD python benchmarks/video.py [--videos 6] [--rounds 3] [--depth B16=12 L14=4]

Generates 720p H.264 clips (2 s at 30 fps, moving blocks) with PyAV. Writes ``benchmarks/results/video.json``:

- decoding: one clip to its 8 sampled frames (Meta's rule) through ``zoo.video.sample`` with each backend
  (PyAV: demux, then one decoding pass; torchcodec: PyAV demux, then ``VideoDecoder(seek_mode="exact")``)
  and torchcodec alone, alternating; seconds per video and sampled frames/s.
- ``embed``: per variant (PE-Core B16 at 224 px, L14 at 336 px, random weights, depth cut as stated),
  videos/s and frames/s of the collection loop (``zoo.collection.media.embed_media_shards``: DataLoader
  workers decode and preprocess, the net embeds, rows pooled, shards written) against the model alone on
  the same preprocessed frames in the same batches. ratio = end to end / model alone (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results import summary, write_result  # noqa: E402
from zoo.collection.media import MediaFiles, embed_media_shards  # noqa: E402
from zoo.nets.pe_vit import PEViT  # noqa: E402
from zoo.registry import find_entry  # noqa: E402
from zoo.transforms import classification_transform  # noqa: E402
from zoo.video import DEFAULT_FRAMES, sample  # noqa: E402


def make_clip(path: Path, seed: int, w: int = 1280, h: int = 720, seconds: float = 2.0, fps: int = 30) -> None:
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(int(seconds * fps)):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * k, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def decode_rows(clip: Path, rounds: int) -> list[dict]:
    from torchcodec.decoders import VideoDecoder

    def torchcodec_alone() -> None:
        d = VideoDecoder(str(clip), seek_mode="exact")
        n = d.metadata.num_frames
        d.get_frames_at([int(i * (n - 1) / (DEFAULT_FRAMES - 1)) for i in range(DEFAULT_FRAMES)])

    cases = (("zoo.video.sample, backend pyav (PyAV demux + decode)", lambda: sample(clip, DEFAULT_FRAMES, backend="pyav")),
             ("zoo.video.sample, backend torchcodec (PyAV demux + torchcodec decode)",
              lambda: sample(clip, DEFAULT_FRAMES, backend="torchcodec")),
             ("torchcodec alone (exact seek mode)", torchcodec_alone))
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _, fn in cases:
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in cases:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return [{"case": "720p H.264 clip, 60 frames, to its 8 sampled frames", "decoder": name, "seconds_per_video": summary(ts),
             "sampled_frames_per_s": summary([DEFAULT_FRAMES / t for t in ts])} for name, ts in times.items()]


def embed_rows(variant: str, depth: int, clips: list[Path], rounds: int, workers: int, batch: int, tmp: Path) -> dict:
    entry = find_entry("core", variant)
    cfg = dataclasses.replace(entry.config, depth=depth)
    torch.manual_seed(0)
    net = PEViT(cfg).eval()
    size = (cfg.image_size, cfg.image_size)
    transform = classification_transform(size, entry.rgb_stats)
    run = torch.inference_mode()(net.clip_embedding)
    paths = [str(c) for c in clips]
    frames = torch.cat([MediaFiles(paths, transform)[i][1] for i in range(len(paths))])  # decoded once, for the model alone
    video = {"frames": DEFAULT_FRAMES, "segment_seconds": None, "normalize_frames": False}
    alone, e2e = [], []
    run(frames[:batch])  # warm-up
    for _ in range(rounds):
        t = time.perf_counter()
        for a in range(0, len(frames), batch):
            run(frames[a:a + batch]).float()
        alone.append(time.perf_counter() - t)
        out = tmp / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t = time.perf_counter()
        embed_media_shards(run, paths, [0], out, 0, len(paths), batch, workers, transform, torch.device("cpu"), torch.float32,
                           False, cfg.clip_dim, "float16", False, video, size, entry.rgb_stats)
        e2e.append(time.perf_counter() - t)
    n = len(paths)
    return {
        "model": f"PE-Core {variant} {size[0]} px, depth {depth} of {entry.config.depth}", "videos": n, "frames_per_video": DEFAULT_FRAMES,
        "batch_frames": batch, "workers": workers,
        "e2e_videos_per_s": summary([n / t for t in e2e]), "e2e_frames_per_s": summary([n * DEFAULT_FRAMES / t for t in e2e]),
        "alone_frames_per_s": summary([n * DEFAULT_FRAMES / t for t in alone]),
        "ratio": summary([a / e for a, e in zip(alone, e2e)]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="frames per forward pass")
    p.add_argument("--depth", nargs="+", default=["B16=12", "L14=4"], help="VARIANT=DEPTH (blocks kept, for speed)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pe-zoo-video-bench-"))
    try:
        clips = []
        for i in range(args.videos):
            clips.append(tmp / f"clip{i}.mp4")
            make_clip(clips[-1], i)
        rows = decode_rows(clips[0], args.rounds * 3)
        for spec in args.depth:
            variant, depth = spec.split("=")
            row = embed_rows(variant, int(depth), clips, args.rounds, args.workers, args.batch, tmp)
            rows.append({"case": "embed videos (CPU, float32)", **row})
            print(row, flush=True)
        for r in rows[:3]:
            print(r)
        print("wrote", write_result("video", rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
