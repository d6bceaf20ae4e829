"""Matmul throughput (GFLOP/s) of this machine: the ceiling the README's "Speed" section quotes.

    python benchmarks/matmul.py [--model NAME] [--batch 1] [--dtype float32 bfloat16] [--reps 10] [--device cpu|cuda]

Times the four linear layers of one block of the model (default PE-Core L14 at its native 336 px,
batch 1: 577 tokens; qkv W -> 3W, attention out W -> W, MLP in W -> M, MLP out M -> W) with random
inputs, through ``F.linear`` and, on CPU, through a oneDNN-packed weight (what the zoo's eager net
uses under no_grad). Each round calls every (kernel, dtype) once, interleaved, so load from other
processes hits them alike; figures are 2 * rows * in * out FLOPs over the four layers per second,
min/median/max over the rounds; the "zoo" column marks the kernel the zoo's eager net uses on this
machine (``Linear.pack_float32`` decides float32: off on Intel CPUs). Also prints one image's matmul
and attention FLOPs for the model and the time they need at the best median rate: no kernel-level
speed-up can go below it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import summary, write_result  # noqa: E402
from benchmarks.timing import timer  # noqa: E402
from zoo.nets.pe_vit import Linear  # noqa: E402
from zoo.registry import get_entry  # noqa: E402


def block_shapes(width: int, mlp: int) -> list[tuple[int, int]]:
    """(in, out) of one block's linear layers."""
    return [(width, 3 * width), (width, width), (width, mlp), (mlp, width)]


def image_gflop(name: str, batch: int) -> float:
    """Matmul and attention GFLOP of one forward of ``batch`` images at the native size (norms, GELU, RoPE left out)."""
    cfg = get_entry(name).config
    n = cfg.num_prefix_tokens + cfg.grid**2
    per_block = sum(2 * n * i * o for i, o in block_shapes(cfg.width, cfg.mlp_dim)) + 2 * 2 * n * n * cfg.width
    patch = 2 * cfg.grid**2 * cfg.width * 3 * cfg.patch_size**2
    return batch * (cfg.depth * per_block + patch) / 1e9


def kernels(rows: int, shapes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device) -> dict[str, Callable[[], None]]:
    """One block's linears through ``F.linear`` and (CPU, oneDNN available) a packed weight."""
    layers = []
    for k, m in shapes:
        x = torch.randn(1, rows, k, dtype=dtype, device=device)
        w = torch.randn(m, k, dtype=dtype, device=device) * k**-0.5
        b = torch.zeros(m, dtype=dtype, device=device)
        layers.append((x, w, b))

    def plain() -> None:
        for x, w, b in layers:
            F.linear(x, w, b)

    out = {"F.linear": plain}
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        packed = [(x, torch.ops.mkldnn._reorder_linear_weight(w, rows), b) for x, w, b in layers]

        def onednn() -> None:
            for x, p, b in packed:
                torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "")

        out["packed"] = onednn
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rope_i_vit_l14_pn_aps_c1_pe-core")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be at least 5")
    device = torch.device(args.device)
    cfg = get_entry(args.model).config
    rows = args.batch * (cfg.num_prefix_tokens + cfg.grid**2)
    shapes = block_shapes(cfg.width, cfg.mlp_dim)
    flop = sum(2 * rows * k * m for k, m in shapes)
    fns = {(name, d): fn for d in args.dtype for name, fn in kernels(rows, shapes, getattr(torch, d), device).items()}

    clock = timer(device)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        for _ in range(args.reps):
            for key, fn in fns.items():
                times[key].append(clock(fn))
    print(f"# {args.model} block linears, {rows} rows (batch {args.batch}) on {device} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"GFLOP/s min/median/max over {args.reps} rounds")
    print("| kernel | dtype | GFLOP/s | zoo |")
    print("|---|---|---|---|")
    best = 0.0
    data = []
    packed_timed = any(name == "packed" for name, _ in fns)
    for (name, d), t in times.items():
        rates = [flop / s / 1e9 for s in t]
        best = max(best, statistics.median(rates))
        packs = packed_timed and (d != "float32" or Linear.pack_float32)  # what the zoo's eager net runs
        used = "yes" if (name == "packed") == packs else ""
        print(f"| {name} | {d} | {min(rates):.0f}/{statistics.median(rates):.0f}/{max(rates):.0f} | {used} |")
        data.append({"kernel": name, "dtype": d, "GFLOP/s": summary(rates, digits=3), "the zoo's eager net uses it": used})
    gflop = image_gflop(args.model, args.batch)
    print(f"one forward of batch {args.batch}: {gflop:.0f} GFLOP of matmuls and attention; "
          f"at the best median rate ({best:.0f} GFLOP/s) at least {gflop / best:.2f} s")
    notes = (f"One block's four linears of {args.model}, {rows} rows (batch {args.batch}), on {device}. "
             f"One forward: {gflop:.0f} GFLOP of matmuls and attention, at least {gflop / best:.2f} s at the best median rate. {args.notes}")
    print(f"wrote {write_result('matmul', data, notes=notes.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
