"""Load time and memory: zoo.load_pretrained_model vs timm create_model + load_state_dict.

    python benchmarks/load.py [--variant L14] [--dtype float32 bfloat16] [--repeats 3] [--no-timm] [--workdir DIR]

Both load the same seeded random weights of a full-size PE-Core model (real weights need the Hub):
the zoo from its converted safetensors (resolved and verified through an offline Hub cache), timm from
a safetensors file in its own layout (``safetensors.torch.load_file``, timm's path for such files).
Each load runs in a fresh process (warm page cache); wall time covers the load only (imports are
reported apart). Memory, from /proc/self/status: RSS after the imports (the import baseline); the
peak RSS (VmHWM) at the end of the load; the peak once every weight was read (the meaningful peak for
a memory-mapped load, whose pages are read on use); and RSS and anonymous RSS (RssAnon) after the
first inference (one image at the native size, no gradients), when the zoo's linear weights are
packed for oneDNN. The two loads hold the same weights if their first outputs agree (CLIP embedding
of the same image: a swapped, transposed or misplaced tensor changes it, which a sum would not see).
Targets: zoo load time <= 0.5 x timm's (issue 4); zoo RSS after the first inference <= 1.15 x the
weights' bytes + the import baseline (issue 15).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import summary, write_result  # noqa: E402
from zoo import weights  # noqa: E402
from zoo.registry import find_entry  # noqa: E402
from zoo.testing.hub_cache import add_file, use_cache  # noqa: E402
from zoo.testing.synthetic import meta_vision_state_dict  # noqa: E402

GiB = 2**30


def memory() -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of this process, in bytes."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def child(kind: str, variant: str, dtype_name: str, workdir: Path) -> None:
    entry = find_entry("core", variant)
    dtype = getattr(torch, dtype_name)
    if kind == "timm":
        import timm
        from safetensors.torch import load_file
    else:
        from zoo.loader import load_pretrained_model
    imported, before = time.perf_counter(), memory()
    if kind == "timm":
        model = timm.create_model(timm_name(variant), pretrained=False, num_classes=entry.config.clip_dim)
        model.load_state_dict(load_file(workdir / "timm.safetensors"))
        model.eval().requires_grad_(False).to(dtype)
    else:
        with use_cache(workdir / "hub", offline=True):
            model, _ = load_pretrained_model(entry.name, inference=True, dtype=dtype, weights_dir=workdir / "weights")
    seconds, loaded = time.perf_counter() - imported, memory()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():  # read every weight once (touches every page of a mapped file)
            p.sum()
    read_all = memory()
    x = torch.rand(1, 3, entry.config.image_size, entry.config.image_size, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    with torch.inference_mode():
        out = model(x.to(dtype)) if kind == "timm" else model.clip_embedding(x.to(dtype))
    infer_s, inferred = time.perf_counter() - t, memory()
    print(json.dumps({
        "kind": kind, "load_s": seconds, "import_s": imported - T_START, "infer_s": infer_s, "weight_bytes": weight_bytes,
        "rss_imports": before["VmRSS"], "peak_load": loaded["VmHWM"], "peak_read_all": read_all["VmHWM"],
        "rss_inferred": inferred["VmRSS"], "anon_inferred": inferred["RssAnon"], "file_inferred": inferred["RssFile"],
        "peak_end": inferred["VmHWM"], "out": out.float().flatten().tolist(),
    }))


def timm_name(variant: str) -> str:
    entry = find_entry("core", variant)
    size = {"T": "tiny", "S": "small", "B": "base", "L": "large", "G": "gigantic"}[variant[0]]
    return f"vit_pe_core_{size}_patch{entry.config.patch_size}_{entry.config.image_size}"


def prepare(variant: str, workdir: Path, with_timm: bool) -> int:
    """Meta checkpoint in an offline Hub cache -> the zoo's file (resolved, converted, recorded); timm's file."""
    entry = find_entry("core", variant)
    meta = meta_vision_state_dict(entry.config, seed=0)
    src = workdir / entry.source.file
    torch.save(meta, src)
    add_file(workdir / "hub", entry.source.repo, entry.source.file, src)
    src.unlink()
    with use_cache(workdir / "hub", offline=True):
        path = weights.resolve(entry, workdir / "weights", progress=False)
    if with_timm:
        import timm
        from safetensors.torch import save_file
        from timm.models.eva import checkpoint_filter_fn

        model = timm.create_model(timm_name(variant), pretrained=False, num_classes=entry.config.clip_dim)
        sd = checkpoint_filter_fn(meta, model)
        model.load_state_dict(sd)  # the same weights, in timm's layout
        save_file({k: v.contiguous() for k, v in sd.items()}, workdir / "timm.safetensors")
        del model, sd
    del meta
    gc.collect()
    return path.stat().st_size


def run_child(kind: str, variant: str, dtype: str, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--variant", variant, "--dtype", dtype, "--workdir", str(workdir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{kind} {dtype} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def same_outputs(a: list[float], b: list[float], dtype: str) -> float:
    """Cosine similarity of two outputs; raises if the two loads cannot hold the same weights."""
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    cos = float(torch.nn.functional.cosine_similarity(ta, tb, dim=0))
    limit = 1 - 1e-9 if dtype == "float32" else 0.999
    if cos < limit or (dtype == "float32" and (ta - tb).abs().max() > 1e-4 * ta.abs().max()):
        raise SystemExit(f"the zoo and timm hold different weights: outputs differ (cosine {cos:.6f})")
    return cos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="L14", help="PE-Core variant (default L14)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-timm", action="store_true", help="the zoo alone (e.g. G14 on a small machine)")
    parser.add_argument("--workdir", type=Path, help="folder for the files (default: a temporary folder)")
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    parser.add_argument("--child", choices=["zoo", "timm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.variant, args.dtype[0], args.workdir)
    kinds = ["zoo"] + ([] if args.no_timm else ["timm"])
    with tempfile.TemporaryDirectory(prefix="pe-zoo-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        file_bytes = prepare(args.variant, workdir, not args.no_timm)
        print(f"PE-Core-{args.variant}: weights file {file_bytes / GiB:.2f} GiB (prepared in {time.perf_counter() - t:.0f}s), "
              f"torch {torch.__version__}")
        runs: dict[tuple[str, str], list[dict]] = {}
        for dtype in args.dtype:
            for _ in range(args.repeats):
                for kind in kinds:
                    runs.setdefault((kind, dtype), []).append(run_child(kind, args.variant, dtype, workdir))
        entry = find_entry("core", args.variant)
        weights.sidecar_path(workdir / "weights" / entry.weights.file).unlink()  # first load after a download
        first = run_child("zoo", args.variant, args.dtype[0], workdir)
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    rng = lambda rs, k: f"{min(r[k] for r in rs) / GiB:.2f}-{max(r[k] for r in rs) / GiB:.2f}"  # noqa: E731
    print(f"\n{'':38s} {'load s':>16s} {'import RSS':>10s} {'peak load':>10s} {'peak all read':>13s} "
          f"{'RSS 1st inf':>11s} {'anon 1st inf':>12s} {'weights':>8s}  (GiB; min-max over runs; load s median [min-max])")
    rows = {f"{k} {d}": rs for (k, d), rs in runs.items()}
    rows[f"zoo {args.dtype[0]}, first load (full sha256)"] = [first]
    for label, rs in rows.items():
        times = [r["load_s"] for r in rs]
        print(f"{label:38s} {statistics.median(times):6.2f} [{min(times):.2f}-{max(times):.2f}] {rng(rs, 'rss_imports'):>10s} "
              f"{rng(rs, 'peak_load'):>10s} {rng(rs, 'peak_read_all'):>13s} {rng(rs, 'rss_inferred'):>11s} "
              f"{rng(rs, 'anon_inferred'):>12s} {rs[0]['weight_bytes'] / GiB:8.2f}")
    print()
    table = [{"load": label, "load s": summary([r["load_s"] for r in rs]),
              "peak RSS of the load - imports, x weights": summary([(r["peak_load"] - r["rss_imports"]) / r["weight_bytes"] for r in rs]),
              "RSS after 1st inference - imports, x weights": summary([(r["rss_inferred"] - r["rss_imports"]) / r["weight_bytes"] for r in rs]),
              "weights GiB": round(rs[0]["weight_bytes"] / GiB, 3)} for label, rs in rows.items()]
    for dtype in args.dtype:
        if not args.no_timm:
            table.append({"load": f"zoo / timm load time, {dtype}", "load s": summary(
                [z["load_s"] / t["load_s"] for z, t in zip(runs[("zoo", dtype)], runs[("timm", dtype)])])})
    print(f"wrote {write_result('load', table, notes=f'PE-Core-{args.variant}, random weights. {args.notes}'.strip())}")
    for dtype in args.dtype:
        zoo = runs[("zoo", dtype)]
        budget = [1.15 * r["weight_bytes"] + r["rss_imports"] for r in zoo]
        worst = max(r["rss_inferred"] / b for r, b in zip(zoo, budget))
        extra = [(r["rss_inferred"] - r["rss_imports"]) / r["weight_bytes"] for r in zoo]
        print(f"{dtype}: zoo RSS after the first inference = import baseline + {min(extra):.2f}-{max(extra):.2f} x weights "
              f"(target <= 1.15: {'met' if worst <= 1 else 'NOT met'}); first inference {med(zoo, 'infer_s'):.2f} s")
        if not args.no_timm:
            timm_rs = runs[("timm", dtype)]
            ratio = med(zoo, "load_s") / med(timm_rs, "load_s")
            print(f"{dtype}: load time ratio zoo/timm {ratio:.3f} (target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'}); "
                  f"same weights (first outputs agree, cosine {same_outputs(zoo[0]['out'], timm_rs[0]['out'], dtype):.6f})")


if __name__ == "__main__":
    main()
