"""End-to-end ``python -m zoo embed`` against the model alone, at the same batch size and dtype.

    PYTHONPATH=$PWD python benchmarks/embed.py [--variants B16 L14] [--images 256 48] [--batch 32]
        [--dtype bfloat16] [--device cpu|cuda] [--workers N] [--dir /tmp/pe-zoo-embed-bench]

Generates photo-sized JPEGs (640x480 and 1024x768, smooth colour fields with texture and noise, quality
90) and PE-Core checkpoints with seeded random weights (speed does not depend on the values). Per variant:

- end to end: ``python -m zoo embed`` in a subprocess on the folder (DataLoader workers decode and
  preprocess, the net embeds, shards are written); images/s from the command's own "embedded N images
  in T s" line (the loop, from the first batch requested to the last shard written: model loading excluded);
- model alone: the same callable (``zoo.optimize``'s choice for the device, or eager with ``--no-optimize``)
  on the same images already decoded and preprocessed, on the device, in the same batches.

ratio = end to end / model alone (goal >= 0.9). The two runs alternate (model, end to end, model, ...)
``--rounds`` times so that load from other processes hits both alike; each figure is the median.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results import summary, write_result  # noqa: E402
from zoo.loader import load_pretrained_model  # noqa: E402
from zoo.optimize import optimize  # noqa: E402
from zoo.registry import find_entry  # noqa: E402
from zoo.nets.text import TextConfig  # noqa: E402
from zoo.testing.synthetic import meta_clip_state_dict  # noqa: E402
from zoo.transforms import classification_transform  # noqa: E402
from zoo.weights import convert_checkpoint  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SMALL_TEXT = TextConfig(width=64, depth=1, heads=2, mlp_dim=128, context_length=32, vocab_size=100)


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("*.jpg"))
    if len(paths) >= n:
        return paths[:n]
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (1024, 768) if i % 4 == 3 else (640, 480)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        img = np.stack([base[c] + 60 * np.sin(xx / rng.uniform(20, 90) + c) * np.cos(yy / rng.uniform(20, 90)) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))[:n]


def ensure_weights(variant: str, home: Path) -> str:
    entry = find_entry("core", variant)
    target = home / "weights" / entry.weights.file
    if not target.exists():
        home.mkdir(parents=True, exist_ok=True)
        src = home / f"{variant}-meta.pt"
        torch.save(meta_clip_state_dict(entry.config, SMALL_TEXT, seed=0), src)
        convert_checkpoint(entry, src, home / "weights")
        src.unlink()
    return entry.name


def model_alone(name: str, paths: list[Path], batch: int, dtype: torch.dtype, device: str, use_optimize: bool) -> float:
    net, info = load_pretrained_model(name, inference=True, dtype=dtype, device=device, progress_bar=False)
    transform = classification_transform(info.size, info.rgb_stats)
    xs = [torch.stack([transform(Image.open(p)) for p in paths[i:i + batch]]).to(device, dtype) for i in range(0, len(paths), batch)]
    fn = optimize(net, method="embedding") if use_optimize else net.embedding
    with torch.inference_mode():
        fn(xs[0])  # warm-up (and any compile) outside the timing, as the end-to-end run pays it inside
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x in xs:
            fn(x).float().cpu()
        seconds = time.perf_counter() - t
    return len(paths) / seconds


def end_to_end(name: str, folder: Path, out: Path, args: argparse.Namespace, env: dict[str, str]) -> float:
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "zoo", "embed", name, str(folder), "--out", str(out), "--batch-size", str(args.batch),
           "--dtype", args.dtype, "--device", args.device, "--optimize" if args.optimize else "--no-optimize"]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    m = re.search(r"embedded (\d+) images in ([\d.]+) s \(([\d.]+) img/s\)", run.stderr)
    return float(m.group(3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["B16", "L14"])
    p.add_argument("--images", type=int, nargs="+", default=[256, 48], help="images per variant")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=False,
                   help="zoo.optimize on both sides (on CUDA: torch.compile; default off: the eager net on both)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/pe-zoo-embed-bench"))
    p.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = p.parse_args()
    rows = []
    home = args.dir / "zoo-home"
    os.environ["ZOO_HOME"] = str(home)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"device {args.device}, dtype {args.dtype}, batch {args.batch}, workers {args.workers or 'default'}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    for variant, n in zip(args.variants, args.images * len(args.variants)):
        paths = make_images(args.dir / "images", n)
        folder = args.dir / f"images-{n}"
        if not folder.exists():
            folder.mkdir()
            for path in paths:
                os.symlink(path, folder / path.name)
        name = ensure_weights(variant, home)
        alone, e2e = [], []
        for _ in range(args.rounds):
            alone.append(model_alone(name, paths, args.batch, DTYPES[args.dtype], args.device, args.optimize))
            e2e.append(end_to_end(name, folder, args.dir / "out", args, env))
        a, e = statistics.median(alone), statistics.median(e2e)
        print(f"{variant}: {n} images: model alone {a:.2f} img/s {sorted(round(x, 2) for x in alone)}, "
              f"end to end {e:.2f} img/s {sorted(round(x, 2) for x in e2e)}, ratio {e / a:.2f}", flush=True)
        rows.append({"model": f"PE-Core-{variant}", "images": n, "batch": args.batch, "dtype": args.dtype, "device": args.device,
                     "model alone img/s": summary(alone), "python -m zoo embed img/s": summary(e2e),
                     "end to end / model alone": summary([x / y for x, y in zip(e2e, alone)])})
    print(f"wrote {write_result('embed', rows, notes=args.notes)}")


if __name__ == "__main__":
    main()
