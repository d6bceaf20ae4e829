"""ONNX Runtime against the zoo's eager net and zoo.optimize, on the same random weights, in one run.

    python benchmarks/export.py [--model NAME] [--batch 1 8] [--reps 5] [--warmup 1] [--threads N] [--profile]

The net (float32, CPU) is exported with ``zoo.export.to_onnx`` (dynamic batch, the native size; the
export checks itself against the eager net) and run by an ONNX Runtime session with all graph
optimisations on and ``intra_op_num_threads`` = ``--threads`` (default: the machine's cores, which
torch also uses). All three compute the pooled embedding; calls alternate eager, optimize, ORT,
eager, ... after the warm-up, and each figure is min / median / max of ``--reps`` calls.
``--profile`` adds a per-operator profile of one batch through ONNX Runtime and through the eager net.
Defaults: PE-Core L14 at its native 336 px.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from benchmarks.results import summary, write_result  # noqa: E402
from zoo.export import require_onnx, to_onnx  # noqa: E402
from zoo.registry import get_entry  # noqa: E402
from zoo.testing.synthetic import meta_vision_state_dict  # noqa: E402
from zoo.weights import meta_to_zoo  # noqa: E402


def session(path: Path, threads: int, profile: bool = False):
    ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(fns: dict[str, object], reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, calls alternating A B C A B C ... after ``warmup`` rounds."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


def rate(batch: int, seconds: list[float]) -> str:
    """Images per second: median (slowest-fastest call)."""
    return f"{batch / statistics.median(seconds):.3f} ({batch / max(seconds):.3f}-{batch / min(seconds):.3f})"


def profile(net: zoo.PEViT, onnx_path: Path, x: torch.Tensor, threads: int, top: int = 12) -> None:
    """Where the time goes in each: ONNX Runtime's per-node profile and torch's per-operator profile."""
    s = session(onnx_path, threads, profile=True)
    s.run(None, {"image": x.numpy()})
    trace = Path(s.end_profiling())
    by_op: collections.Counter[str] = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1e6
    trace.unlink()
    total = sum(by_op.values())
    print(f"\n## ONNX Runtime, batch {x.shape[0]}: {total:.2f} s in kernels")
    for op, t in by_op.most_common(top):
        print(f"  {op:28s} {t:7.3f} s  {t / total:5.1%}")
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net.embedding(x)
    print(f"\n## zoo eager, batch {x.shape[0]}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rope_i_vit_l14_pn_aps_c1_pe-core")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--depth", type=int, help="cut the tower to this many blocks (a quick trial run)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = parser.parse_args(argv)
    rows = []
    torch.set_num_threads(args.threads)
    entry = get_entry(args.model)
    cfg = entry.config if args.depth is None else type(entry.config)(**{**entry.config.to_dict(), "depth": args.depth})
    net = zoo.PEViT(cfg)
    net.load_state_dict(meta_to_zoo(meta_vision_state_dict(cfg, seed=0), cfg))
    net.eval().requires_grad_(False)
    fast = zoo.optimize(net, method="embedding")
    print(f"# {args.model} (depth {cfg.depth}) at {cfg.image_size} px, float32, {args.threads} threads; "
          f"torch {torch.__version__}, onnxruntime {require_onnx().__version__}; zoo.optimize: "
          f"{'compiled' if fast.compiled else 'eager'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = to_onnx(net, Path(tmp) / "net.onnx")
        print(f"  exported and checked in {time.perf_counter() - t0:.0f} s", flush=True)
        s = session(path, args.threads)
        print("\n| batch | zoo eager img/s | zoo.optimize img/s | ONNX Runtime img/s | ORT / eager (median) | "
              "ORT / eager (min, max of per-round ratios) |")
        print("|---|---|---|---|---|---|", flush=True)
        for batch in args.batch:
            x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
            xn = x.numpy()
            fns = {"eager": lambda: net.embedding(x), "optimize": lambda: fast(x), "ort": lambda: s.run(None, {"image": xn})}
            t0 = time.perf_counter()
            t = interleaved(fns, args.reps, args.warmup)
            ratios = [e / o for e, o in zip(t["eager"], t["ort"])]  # per round: > 1 means ORT is faster
            print(f"| {batch} | {rate(batch, t['eager'])} | {rate(batch, t['optimize'])} | {rate(batch, t['ort'])} | "
                  f"{statistics.median(t['eager']) / statistics.median(t['ort']):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |"
                  f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append({"model": f"{entry.name} depth {cfg.depth}", "batch": batch,
                         "zoo eager img/s": summary([batch / v for v in t["eager"]]),
                         "zoo.optimize img/s": summary([batch / v for v in t["optimize"]]),
                         "ONNX Runtime img/s": summary([batch / v for v in t["ort"]]),
                         "ORT / eager (per round)": summary(ratios)})
        print(f"wrote {write_result('export', rows, notes=args.notes)}")
        if args.profile:
            for batch in args.batch:
                profile(net, path, torch.randn(batch, 3, cfg.image_size, cfg.image_size), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
