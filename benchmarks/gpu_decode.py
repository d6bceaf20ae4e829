"""GPU decoding on a CUDA machine: ``zoo embed`` end to end with JPEGs decoded on the GPU, against the model alone.

    PYTHONPATH=$PWD python3 benchmarks/gpu_decode.py            # on a CUDA machine: about 4 minutes on an H200
    PYTHONPATH=$PWD python3 benchmarks/gpu_decode.py --smoke    # T16, a few files, on the CPU: checks the script

Self-contained: needs torch, torchvision, numpy, Pillow and the zoo's own dependencies; installs and
downloads nothing. It builds a PE-Core L14 checkpoint with seeded random weights (speed and the
decode differences do not depend on the values) and its own inputs (photo-sized JPEGs, 640x480 and
1024x768; 720p H.264 clips when PyAV is installed). It writes ``benchmarks/results/gpu_decode.json``:

- images: ``python -m zoo embed`` images/s with ``--gpu-decode`` (nvJPEG through torchvision, resize on
  the GPU) and with ``--no-gpu-decode`` (PIL in DataLoader workers, 8-bit pixels normalised on the GPU),
  against the model alone (the same net, dtype and batch on preprocessed inputs already on the GPU);
  ratio = the embedding loop's rate (its log line) / alone (goal >= 0.9); the steady rate, from the same
  command on a few batches (fixed costs cancel); the whole command's seconds (Python, model load included);
- the parts: the device decode alone in one process, and the DataLoader workers alone in each mode;
- whether ``--no-gpu-decode`` inputs normalised on the GPU equal the CPU transform's to the bit; the largest
  pixel difference (8-bit levels, after resizing) between GPU- and PIL-decoded inputs, and the resulting
  embedding difference (float32 net: largest relative difference, smallest cosine);
- videos (PyAV present): ``zoo embed`` videos/s (PyAV decoding in workers, 8 frames a video) against the
  model alone on those frames; torchcodec's CUDA decoder, when torchcodec is installed, timed on the same
  clips with its pixel difference to PyAV. Either part is skipped, and the JSON says so, when its library is absent.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results import summary, write_result  # noqa: E402
from zoo.loader import load_pretrained_model  # noqa: E402
from zoo.nets.text import TextConfig  # noqa: E402
from zoo.registry import find_entry  # noqa: E402
from zoo.testing.synthetic import meta_clip_state_dict  # noqa: E402
from zoo.transforms import classification_transform  # noqa: E402
from zoo.weights import convert_checkpoint  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SMALL_TEXT = TextConfig(width=64, depth=1, heads=2, mlp_dim=128, context_length=32, vocab_size=100)
RATE = re.compile(r"embedded (\d+) (?:images|files) in ([\d.]+) s \(([\d.]+) (?:img|files)/s\)")
FRAMES = 8


def make_image(args: tuple[Path, int]) -> None:
    path, i = args
    rng = np.random.default_rng(i)
    w, h = (1024, 768) if i % 4 == 3 else (640, 480)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    img = np.stack([base[c] + 60 * np.sin(xx / rng.uniform(20, 90) + c) * np.cos(yy / rng.uniform(20, 90)) for c in range(3)], -1)
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_clip(args: tuple[Path, int, int, int]) -> None:
    import av

    path, seed, w, h = args
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(60):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * k, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def ensure_weights(variant: str, home: Path) -> str:
    entry = find_entry("core", variant)
    home.mkdir(parents=True, exist_ok=True)
    src = home / f"{variant}-meta.pt"
    torch.save(meta_clip_state_dict(entry.config, SMALL_TEXT, seed=0), src)
    convert_checkpoint(entry, src, home / "weights")
    src.unlink()
    return entry.name


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_alone(fn, x: torch.Tensor, total: int, batch: int, device: str, rounds: int) -> list[float]:
    """Items/s of ``fn`` over ``total`` inputs in batches of ``batch``, cycling through the preprocessed ``x``."""
    rates = []
    with torch.inference_mode():
        fn(x[:batch])
        sync(device)
        for _ in range(rounds):
            t = time.perf_counter()
            done = 0
            while done < total:
                k = min(batch, total - done)
                start = done % (len(x) - k + 1)
                fn(x[start:start + k]).float().cpu()
                done += k
            rates.append(total / (time.perf_counter() - t))
    return rates


def zoo_embed(name: str, inputs: list[Path], out: Path, args, extra: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``python -m zoo embed`` over ``inputs``: (images/s of its embedding loop, from its log line; whole-process seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    listing = out.parent / f"{out.name}-inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in inputs))
    cmd = [sys.executable, "-m", "zoo", "embed", name, f"@{listing}", "--out", str(out), "--batch-size", str(args.batch),
           "--dtype", args.dtype, "--device", args.device, "--no-optimize", "--workers", str(args.workers), *extra]
    t = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    whole = time.perf_counter() - t
    if run.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    return float(RATE.search(run.stderr).group(3)), whole


def decode_alone(paths: list[Path], info, args) -> list[float]:
    """Images/s of the device decode in one process (bytes already read): nvJPEG, upright, resize, normalise."""
    from zoo.gpu_decode import decode_jpegs, normalize, read_jpeg, resize_pixels

    jpegs = [read_jpeg(p) for p in paths[:512]]
    data = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d, _ in jpegs]
    turns = [o for _, o in jpegs]
    rates = []
    for _ in range(3):
        sync(args.device)
        t = time.perf_counter()
        for a in range(0, len(data), args.batch):
            x = normalize(resize_pixels(decode_jpegs(data[a:a + args.batch], args.device, turns[a:a + args.batch]), info.size),
                          info.rgb_stats)
        sync(args.device)
        rates.append(len(data) / (time.perf_counter() - t))
    del x
    return rates[1:]


def _decode_share(job: tuple[list[Path], tuple[int, int], dict, str, int]) -> tuple[int, float]:
    """In a fresh process: decode, upright and resize ``paths`` on the device in batches; (images, seconds)."""
    from zoo.gpu_decode import decode_jpegs, read_jpeg, resize_pixels

    paths, size, _, device, batch = job
    jpegs = [read_jpeg(p) for p in paths]
    data = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d, _ in jpegs]
    resize_pixels(decode_jpegs(data[:batch], device), size)  # warm: the decoder's set-up
    sync(device)
    t = time.perf_counter()
    for a in range(0, len(data), batch):
        resize_pixels(decode_jpegs(data[a:a + batch], device, [o for _, o in jpegs[a:a + batch]]), size)
    sync(device)
    return len(data), time.perf_counter() - t


def decode_processes(paths: list[Path], info, args, processes: int) -> float:
    """Images/s of the device decode in ``processes`` processes at once (each its own nvJPEG state): does it scale?"""
    import multiprocessing

    share = paths[:512 * processes]
    jobs = [(share[k::processes], tuple(info.size), info.rgb_stats, args.device, args.batch) for k in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        done = pool.map(_decode_share, jobs)
    return sum(n for n, _ in done) / max(t for _, t in done)


def loader_alone(paths: list[Path], info, args, raw_jpeg: bool) -> float:
    """Images/s of the DataLoader workers alone (what ``zoo embed`` on CUDA gets from them), nothing on the GPU."""
    from torch.utils.data import DataLoader

    from zoo.collection.media import MediaFiles, _collate
    from zoo.gpu_decode import pixel_transform

    batches = [list(range(a, min(a + args.batch, len(paths)))) for a in range(0, len(paths), args.batch)]
    loader = DataLoader(MediaFiles([str(p) for p in paths], pixel_transform(info.size), raw_jpeg=raw_jpeg),
                        batch_sampler=batches, num_workers=args.workers, collate_fn=_collate, prefetch_factor=4)
    t = time.perf_counter()
    n = sum(len(batch.items) for batch in loader)
    return n / (time.perf_counter() - t)


def image_part(name: str, paths: list[Path], folder: Path, tmp: Path, args, env) -> list[dict]:
    from zoo.collection.media import MediaFiles, _collate
    from zoo.gpu_decode import decode_batch, normalize, pixel_transform

    dtype = DTYPES[args.dtype]
    net, info = load_pretrained_model(name, inference=True, dtype=dtype, device=args.device, progress_bar=False)
    transform = classification_transform(info.size, info.rgb_stats)
    x = torch.stack([transform(Image.open(p)) for p in paths[:256]]).to(args.device, dtype)
    model = f"PE-Core {args.variant} {info.size[0]} px {args.dtype}"
    common = {"part": "images", "model": model, "batch": args.batch, "workers": args.workers}
    rows = [{**common, "case": "decode alone on the device (nvJPEG, upright, resize, normalise; one process)",
             "images_per_s": summary(decode_alone(paths, info, args))}]
    for k in (2, 4):
        rows.append({**common, "case": f"decode alone on the device in {k} processes at once (upright, resize)",
                     "images_per_s": summary([decode_processes(paths, info, args, k)])})
    for raw, case in ((True, "DataLoader workers alone, --gpu-decode (read bytes and EXIF)"),
                      (False, "DataLoader workers alone, --no-gpu-decode (PIL decode and resize to 8-bit pixels)")):
        rows.append({**common, "case": case, "images": len(paths), "images_per_s": summary([loader_alone(paths, info, args, raw)])})
    print(rows, flush=True)
    few = paths[:args.batch * 4] if len(paths) > 8 * args.batch else paths[:len(paths) // 2]
    alone, runs = [], {"--gpu-decode": ([], [], []), "--no-gpu-decode": ([], [], [])}
    for r in range(args.rounds):  # alternate, so that any drift hits all alike
        alone += model_alone(net.embedding, x, len(paths), args.batch, args.device, 1)
        for flag, (rates, wholes, marginal) in runs.items():
            rate, whole = zoo_embed(name, paths, tmp / "out", args, [flag], env)
            rates.append(rate)
            wholes.append(whole)
            if r == 0:  # the same command on a few batches: the fixed cost (workers starting, first batches)
                small, _ = zoo_embed(name, few, tmp / "out", args, [flag], env)
                seconds = len(paths) / rate - len(few) / small
                marginal.append((len(paths) - len(few)) / seconds)
    rows.append({**common, "case": "model alone", "images": len(paths), "images_per_s": summary(alone), "ratio_to_alone": None})
    for flag, (rates, wholes, marginal) in runs.items():
        rows.append({**common, "case": f"zoo embed {flag}", "images": len(paths), "images_per_s": summary(rates),
                     "ratio_to_alone": summary([r / a for r, a in zip(rates, alone)]),
                     "steady_images_per_s": summary(marginal),
                     "steady_ratio_to_alone": summary([m / statistics.median(alone) for m in marginal]),
                     "whole_command_s": summary(wholes)})
    del x

    # the --no-gpu-decode inputs on the GPU equal the CPU transform's to the bit
    sample = paths[:64]
    cpu = torch.stack([transform(Image.open(p)) for p in sample])
    items = [MediaFiles([str(p)], pixel_transform(info.size))[0] for p in sample]
    _, pixels = _collate(items).ready()
    same = torch.equal(normalize(pixels.to(args.device), info.rgb_stats).cpu(), cpu)
    rows.append({**common, "case": "--no-gpu-decode inputs normalised on the GPU vs the CPU transform (64 images)",
                 "bit_identical": same})
    # pixel and embedding differences: GPU decode + GPU resize against PIL, through a float32 copy of the net
    raw = [MediaFiles([str(p)], pixel_transform(info.size), raw_jpeg=True)[0] for p in sample]
    _, pixels = decode_batch(_collate(raw), [str(p) for p in sample], info.size, torch.device(args.device), pixel_transform(info.size))
    dev_inputs, pil_inputs = normalize(pixels, info.rgb_stats), cpu.to(args.device)
    std = torch.tensor(info.rgb_stats["std"], device=args.device).view(1, 3, 1, 1)
    levels = ((dev_inputs - pil_inputs) * std * 255).abs()
    net = net.float()
    with torch.inference_mode():
        a, b = net.embedding(dev_inputs).float(), net.embedding(pil_inputs).float()
    rel = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
    rows.append({"part": "images", "case": "GPU decode vs PIL (64 images, float32 net)",
                 "max_pixel_diff_levels": round(levels.max().item(), 3), "mean_pixel_diff_levels": round(levels.mean().item(), 4),
                 "max_relative_embedding_diff": float(f"{rel:.3g}"), "min_cosine": float(f"{cos:.7f}")})
    return rows


def video_part(name: str, tmp: Path, args, env) -> tuple[list[dict], list[str]]:
    notes = []
    try:
        import av  # noqa: F401
    except ImportError:
        return [], ["PyAV is not installed here: the video part was skipped"]
    from zoo.collection.media import MediaFiles

    folder = tmp / "videos"
    folder.mkdir()
    w, h = (320, 180) if args.smoke else (1280, 720)
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(make_clip, [(folder / f"clip{i:03d}.mp4", i, w, h) for i in range(args.videos)])
    clips = sorted(folder.glob("*.mp4"))
    dtype = DTYPES[args.dtype]
    net, info = load_pretrained_model(name, inference=True, dtype=dtype, device=args.device, progress_bar=False)
    transform = classification_transform(info.size, info.rgb_stats)
    t = time.perf_counter()
    frames = torch.cat([MediaFiles([str(c)], transform)[0][1] for c in clips[:8]])
    pyav_seconds = (time.perf_counter() - t) / min(8, len(clips))
    x = frames.to(args.device, dtype)
    alone, e2e = [], []
    for _ in range(args.rounds):
        alone += [r / FRAMES for r in model_alone(net.embedding, x, len(clips) * FRAMES, args.batch, args.device, 1)]
        e2e.append(zoo_embed(name, clips, tmp / "vout", args, ["--frames", str(FRAMES)], env)[0])
    rows = [{"part": "videos", "case": case, "model": f"PE-Core {args.variant} {info.size[0]} px {args.dtype}",
             "videos": len(clips), "frames_per_video": FRAMES, "clip": f"{w}x{h} H.264, 60 frames",
             "videos_per_s": summary(rates),
             "ratio_to_alone": summary([r / a for r, a in zip(rates, alone)]) if rates is not alone else None}
            for case, rates in (("model alone", alone), ("zoo embed (PyAV in workers)", e2e))]
    rows.append({"part": "videos", "case": "PyAV decode to 8 frames + preprocess, one process", "seconds_per_video": round(pyav_seconds, 4)})
    try:
        from torchcodec.decoders import VideoDecoder

        from zoo.video import sample

        times, worst = [], 0
        for c in clips[:8]:
            t = time.perf_counter()
            d = VideoDecoder(str(c), device=args.device, seek_mode="exact")
            n = d.metadata.num_frames
            idx = [int(i * (n - 1) / (FRAMES - 1)) for i in range(FRAMES)]
            gpu_frames = d.get_frames_at(idx).data
            sync(args.device)
            times.append(time.perf_counter() - t)
            ref = torch.from_numpy(np.stack(sample(c, FRAMES)[0].frames)).permute(0, 3, 1, 2).to(gpu_frames.device)
            worst = max(worst, (gpu_frames.int() - ref.int()).abs().max().item())
        rows.append({"part": "videos", "case": f"torchcodec decoder on {args.device}, to 8 frames",
                     "seconds_per_video": summary(times), "max_pixel_diff_to_pyav_levels": worst})
    except Exception as e:  # noqa: BLE001 -- absent, or no CUDA decoder in this build: say so and go on
        notes.append(f"torchcodec's {args.device} decoder not measured: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    return rows, notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="L14")
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="T16, 48 images, 4 small clips, float32 on the CPU: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.variant, args.images, args.videos, args.batch, args.workers, args.dtype, args.rounds = "T16", 48, 4, 16, 2, "float32", 1
        args.device = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (use --smoke to check it on the CPU)")
    else:
        args.device = "cuda"
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="pe-zoo-gpu-decode-"))
    try:
        os.environ["ZOO_HOME"] = str(tmp / "zoo-home")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        name = ensure_weights(args.variant, tmp / "zoo-home")
        folder = tmp / "images"
        folder.mkdir()
        paths = [folder / f"{i:05d}.jpg" for i in range(args.images)]
        with Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.map(make_image, [(path, i) for i, path in enumerate(paths)])
        print(f"inputs ready after {time.perf_counter() - start:.0f} s", flush=True)
        rows = image_part(name, paths, folder, tmp, args, env)
        print(f"images done after {time.perf_counter() - start:.0f} s", flush=True)
        video_rows, notes = video_part(name, tmp, args, env)
        rows += video_rows
        notes.append(f"whole run {time.perf_counter() - start:.0f} s")
        out = write_result("gpu_decode", rows, notes="; ".join(notes),
                           out_dir=tmp / "results" if args.smoke else None)
        for row in rows:
            print(row)
        for note in notes:
            print("note:", note)
        print("wrote", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
