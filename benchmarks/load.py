"""Load time and peak memory: zoo.load_pretrained_model vs timm create_model + load_state_dict.

    python benchmarks/load.py [--variant L14] [--repeats 3] [--workdir DIR]

Both load the same seeded random weights of a full-size PE-Core model (real weights need the Hub):
the zoo from its converted safetensors (resolved and verified through an offline Hub cache), timm from
a safetensors file in its own layout (``safetensors.torch.load_file``, timm's path for such files).
Each load runs in a fresh process; wall time covers the load only (imports are reported apart), peak
RSS is the process's high-water mark (VmHWM) at the end of the load, and again after every weight
was read once (a checksum that also proves both hold the same weights). Files are in the page cache for both (warm cache).
Targets (issue 4): zoo time <= 0.5 x timm's; zoo peak RSS <= model bytes + 1.2 GiB.

Measured 2026-11-25 on the 2-core dev machine, shared (load average ~5, so times are inflated),
L14 file 1.18 GiB: zoo 0.58 s, peak 0.67 GiB (1.90 GiB once every weight was read); timm 20.6 s,
peak 3.06 GiB; zoo's first load with a full sha256 2.4 s. Ratios: time 0.03 (target 0.5),
peak RSS 0.28 of the 2.38 GiB budget.
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

from zoo import weights  # noqa: E402
from zoo.testing.hub_cache import add_file, use_cache  # noqa: E402
from zoo.registry import find_entry  # noqa: E402
from zoo.testing.synthetic import meta_vision_state_dict  # noqa: E402

GiB = 2**30


def rss() -> dict[str, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def checksum(model: torch.nn.Module) -> float:
    """Sum of every parameter (float64): independent of layout (renames, fused or split, transposed)."""
    return sum(p.detach().double().sum().item() for p in model.parameters())


def child(kind: str, variant: str, workdir: Path) -> None:
    entry = find_entry("core", variant)
    if kind == "timm":
        import timm
        from safetensors.torch import load_file
    else:
        from zoo.loader import load_pretrained_model
    imported, before = time.perf_counter(), rss()
    if kind == "timm":
        model = timm.create_model(timm_name(variant), pretrained=False, num_classes=entry.config.clip_dim)
        model.load_state_dict(load_file(workdir / "timm.safetensors"))
        model.eval().requires_grad_(False)
    else:
        with use_cache(workdir / "hub", offline=True):
            model, _ = load_pretrained_model(entry.name, inference=True, weights_dir=workdir / "weights")
    seconds, after = time.perf_counter() - imported, rss()
    out = {"kind": kind, "load_s": seconds, "import_s": imported - T_START, "rss_before": before["VmRSS"],
           "peak_rss": after["VmHWM"], "checksum": checksum(model), "peak_rss_touched": rss()["VmHWM"]}
    print(json.dumps(out))


def timm_name(variant: str) -> str:
    entry = find_entry("core", variant)
    size = {"T": "tiny", "S": "small", "B": "base", "L": "large", "G": "gigantic"}[variant[0]]
    return f"vit_pe_core_{size}_patch{entry.config.patch_size}_{entry.config.image_size}"


def prepare(variant: str, workdir: Path) -> int:
    """Meta checkpoint in an offline Hub cache -> the zoo's file (resolved, converted, recorded); timm's file."""
    import timm
    from safetensors.torch import save_file
    from timm.models.eva import checkpoint_filter_fn

    entry = find_entry("core", variant)
    meta = meta_vision_state_dict(entry.config, seed=0)
    src = workdir / entry.source.file
    torch.save(meta, src)
    add_file(workdir / "hub", entry.source.repo, entry.source.file, src)
    src.unlink()
    with use_cache(workdir / "hub", offline=True):
        path = weights.resolve(entry, workdir / "weights", progress=False)
    model = timm.create_model(timm_name(variant), pretrained=False, num_classes=entry.config.clip_dim)
    sd = checkpoint_filter_fn(meta, model)
    model.load_state_dict(sd)  # the same weights, in timm's layout
    save_file({k: v.contiguous() for k, v in sd.items()}, workdir / "timm.safetensors")
    del meta, model, sd
    gc.collect()
    return path.stat().st_size


def run_child(kind: str, variant: str, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--variant", variant, "--workdir", str(workdir)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="L14", help="PE-Core variant (default L14)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="folder for the files (default: a temporary folder)")
    parser.add_argument("--child", choices=["zoo", "timm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.variant, args.workdir)
    with tempfile.TemporaryDirectory(prefix="pe-zoo-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        model_bytes = prepare(args.variant, workdir)
        print(f"PE-Core-{args.variant}: weights file {model_bytes / GiB:.2f} GiB (prepared in {time.perf_counter() - t:.0f}s)")
        runs: dict[str, list[dict]] = {"zoo": [], "timm": []}
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(run_child(kind, args.variant, workdir))
        entry = find_entry("core", args.variant)
        weights.sidecar_path(workdir / "weights" / entry.weights.file).unlink()  # first load after a download
        first = run_child("zoo", args.variant, workdir)
    if abs(runs["zoo"][0]["checksum"] - runs["timm"][0]["checksum"]) > 1e-6 * abs(runs["timm"][0]["checksum"]) + 1e-3:
        raise SystemExit(f"the two loads hold different weights: {runs['zoo'][0]['checksum']} vs {runs['timm'][0]['checksum']}")
    print(f"{'':34s} {'load s (median)':>16s} {'peak RSS GiB':>13s} {'RSS after imports':>18s} {'import s':>9s}"
          f" {'peak RSS, all weights read':>27s}")
    rows = {"zoo load_pretrained_model": runs["zoo"], "timm create_model + load_state_dict": runs["timm"],
            "zoo, first load (full sha256)": [first]}
    for label, rs in rows.items():
        print(f"{label:34s} {statistics.median(r['load_s'] for r in rs):16.2f} {max(r['peak_rss'] for r in rs) / GiB:13.2f} "
              f"{statistics.median(r['rss_before'] for r in rs) / GiB:18.2f} {statistics.median(r['import_s'] for r in rs):9.2f} {max(r['peak_rss_touched'] for r in rs) / GiB:27.2f}")
    zoo_s, timm_s = (statistics.median(r["load_s"] for r in runs[k]) for k in ("zoo", "timm"))
    peak = max(r["peak_rss"] for r in runs["zoo"])
    budget = model_bytes + 1.2 * GiB
    print(f"time ratio zoo/timm {zoo_s / timm_s:.3f} (target <= 0.5: {'met' if zoo_s <= 0.5 * timm_s else 'NOT met'})")
    print(f"zoo peak RSS {peak / GiB:.2f} GiB vs model bytes + 1.2 GiB = {budget / GiB:.2f} GiB "
          f"(ratio {peak / budget:.2f}: {'met' if peak <= budget else 'NOT met'})")
    print("weights checksum equal in both: yes")


if __name__ == "__main__":
    main()
