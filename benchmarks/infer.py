"""Inference speed: the zoo against timm on the same random weights, in the same run.

    python benchmarks/infer.py [--model NAME] [--batch 1 8] [--dtype float32 bfloat16]
                               [--pairing eager best] [--reps 5] [--warmup 2] [--device cpu|cuda]

Two pairings per (batch, dtype): ``eager`` (the zoo net against timm, both holding weights in the
dtype: no autocast) and ``best`` (``zoo.optimize`` against timm under ``torch.compile`` with inductor
freezing); ``compile`` (opt-in) is ``best`` with the zoo forced to compile too. Both sides compute the pooled embedding; calls alternate zoo, timm, zoo, timm ... after
the warm-up (which also pays any compilation), and each figure is the median of ``--reps`` calls.

The floor is the time of the net's matrix multiplies and attention calls alone, each on its own
shape with the faster kernel (``F.linear`` or a oneDNN-packed linear on CPU), timed in the same
interleaved rounds (zoo, timm, floor, zoo, ...) so load from other processes hits all three alike;
"floor share" is floor time / zoo time. Defaults: PE-Core L14 at its native 336 px; float16 is
added on CUDA.

Spread: each figure is given as min/median/max over the ``--reps`` rounds. zoo / timm is taken per
round (the two calls of one round see the same load), and the verdict calls a difference real only
when every round agrees: "zoo faster" when the zoo won every round, "timm faster" when timm did,
"noise" otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from tests.oracle import timm_model  # noqa: E402
from zoo.weights import meta_to_zoo  # noqa: E402
from zoo.registry import get_entry  # noqa: E402
from zoo.testing.synthetic import meta_vision_state_dict  # noqa: E402
from benchmarks.results import summary, write_result  # noqa: E402
from benchmarks.timing import timer  # noqa: E402


def interleaved(fns: list[Callable[[], object]], reps: int, warmup: int, device: torch.device) -> list[list[float]]:
    """Seconds of each call of each function per round, calls alternating A B A B ... after ``warmup`` rounds."""
    clock = timer(device)
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(reps):
            for t, fn in zip(times, fns):
                t.append(clock(fn))
    return times


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """min/median/max of ``values``."""
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def verdict(ratios: list[float]) -> str:
    """Whether zoo / timm speed ratios taken per round show a real difference (every round agrees)."""
    if min(ratios) > 1:
        return "zoo faster"
    if max(ratios) < 1:
        return "timm faster"
    return "noise"


def floor_fn(cfg: zoo.PEConfig, batch: int, n: int, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """One forward's matmuls (blocks and the attention pool's k/v projection) and attention calls, each
    on the faster of ``F.linear`` and a oneDNN-packed linear (CPU); the per-row layers are negligible."""
    W, H, B = cfg.width, cfg.heads, batch
    ops: list[Callable[[], object]] = []

    def linear(rows_in: int, k: int, m: int) -> None:
        x = torch.randn(B, rows_in, k, dtype=dtype, device=device)
        w = torch.randn(m, k, dtype=dtype, device=device) * 0.02
        b = torch.zeros(m, dtype=dtype, device=device)
        fns = [lambda: F.linear(x, w, b)]
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            packed = torch.ops.mkldnn._reorder_linear_weight(w, B * rows_in)
            fns.append(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""))
        times = [statistics.median(t) for t in interleaved(fns, 5, 1, device)]
        ops.append(fns[times.index(min(times))])

    q, k, v = (torch.randn(B, H, n, W // H, dtype=dtype, device=device) for _ in range(3))
    for shape in ((n, W, 3 * W), (n, W, W), (n, W, cfg.mlp_dim), (n, cfg.mlp_dim, W)):
        linear(*shape)
    ops.append(lambda: F.scaled_dot_product_attention(q, k, v))
    block = list(ops)
    if cfg.pool == "attn":
        linear(n, W, 2 * W)
    tail = ops[len(block):]

    def run() -> None:
        for _ in range(cfg.depth):
            for op in block:
                op()
        for op in tail:
            op()

    return run


def nets(name: str, dtype: torch.dtype, device: torch.device) -> tuple[zoo.PEViT, torch.nn.Module]:
    """The zoo net and timm's model holding the same seeded random weights (Meta's layout, converted by each)."""
    entry = get_entry(name)
    cfg = entry.config
    meta = meta_vision_state_dict(cfg, seed=0)
    net = zoo.PEViT(cfg)
    net.load_state_dict(meta_to_zoo(meta, cfg))
    ref = timm_model(entry, cfg, meta, cfg.image_size, cfg.image_size)
    ref.reset_classifier(0)  # pooled embedding, like net.embedding
    return net.eval().to(device, dtype), ref.eval().to(device, dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rope_i_vit_l14_pn_aps_c1_pe-core")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=None, help="default: float32 bfloat16 (+ float16 on CUDA)")
    parser.add_argument("--pairing", nargs="+", choices=["eager", "best", "compile"], default=["eager", "best"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be at least 5 (medians of fewer calls are noise)")
    device = torch.device(args.device)
    dtypes = args.dtype or ["float32", "bfloat16"] + (["float16"] if device.type == "cuda" else [])
    cfg = get_entry(args.model).config
    n = cfg.num_prefix_tokens + cfg.grid**2
    print(f"# {args.model} at {cfg.image_size} px on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows, data = [], []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        net, ref = nets(args.model, dtype, device)
        for batch in args.batch:
            x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, dtype=dtype, device=device)
            floor = floor_fn(cfg, batch, n, dtype, device)
            for pairing in args.pairing:
                torch._dynamo.reset()
                if pairing == "eager":
                    fns = [lambda: net.embedding(x), lambda: ref(x)]
                else:  # best: zoo.optimize's own choice; compile: zoo.optimize forced to compile
                    fast = zoo.optimize(net, method="embedding", mode="auto" if pairing == "best" else "compile")
                    with torch.no_grad():
                        fast_ref = torch.compile(ref, dynamic=False, options={"freezing": True})
                    fns = [lambda: fast(x), lambda: fast_ref(x)]
                t0 = time.perf_counter()
                t_zoo, t_timm, t_floor = interleaved([*fns, floor], args.reps, args.warmup, device)
                total = time.perf_counter() - t0
                ratios = [t / z for z, t in zip(t_zoo, t_timm)]  # per round: both calls saw the same load
                rows.append((
                    pairing, batch, dtype_name,
                    spread([batch / t for t in t_zoo]), spread([batch / t for t in t_timm]),
                    spread(ratios, "{:.2f}"), verdict(ratios),
                    spread([f / z for z, f in zip(t_zoo, t_floor)], "{:.0%}"), spread([batch / t for t in t_floor]),
                ))
                data.append({
                    "pairing": pairing, "batch": batch, "dtype": dtype_name,
                    "zoo img/s": summary([batch / t for t in t_zoo]), "timm img/s": summary([batch / t for t in t_timm]),
                    "zoo / timm": summary(ratios), "verdict": verdict(ratios),
                    "zoo share of floor": summary([f / z for z, f in zip(t_zoo, t_floor)]),
                    "floor img/s": summary([batch / t for t in t_floor]),
                })
                notes = f"{args.model} at {cfg.image_size} px on {device}. {args.notes}".strip()
                write_result("infer", data, notes=notes)  # after every case: a run stopped early keeps what it measured
                print(f"  done {pairing} batch {batch} {dtype_name} in {total:.0f} s", flush=True)
        del net, ref
    print()
    print(f"min/median/max over {args.reps} rounds; zoo / timm and the floor share are taken per round")
    print("| pairing | batch | dtype | zoo img/s | timm img/s | zoo / timm | verdict | zoo share of floor | floor img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"wrote {write_result('infer', data, notes=notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
