"""Resident memory after the first inference, for any registry model, without a Meta checkpoint.

    python benchmarks/infer_memory.py [--model NAME] [--dtype float32 bfloat16] [--workdir DIR]

Writes the model's tensors (seeded random values, the zoo's layout, in the dtype) to a safetensors file
tensor by tensor (so even G14 needs little memory to prepare), then, in a fresh process per dtype, does
what ``load_pretrained_model`` does after verifying a file (build on the meta device, memory-map the
tensors in, eval mode without gradients) and runs one image at the native size. Reports RSS after the
imports (the baseline), after the load and after the first inference, with RssAnon and RssFile, against
the goal of issue 15: RSS after the first inference <= 1.15 x the weights' bytes + the baseline.
(``benchmarks/load.py`` measures the full ``load_pretrained_model`` path on a converted Meta checkpoint.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import write_result  # noqa: E402
from zoo.nets.pe_vit import PEViT  # noqa: E402
from zoo.registry import get_entry  # noqa: E402
from zoo.weights import read_tensors  # noqa: E402
from zoo.weights.writer import TensorSpec, write_safetensors  # noqa: E402

GiB = 2**30


def memory() -> dict[str, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def write_weights(name: str, dtype: torch.dtype, path: Path) -> None:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PEViT(get_entry(name).config).state_dict().items()}

    def produce(i: int, shape: tuple[int, ...]):
        return lambda: (torch.randn(shape, generator=torch.Generator().manual_seed(i)) * 0.02).to(dtype)

    write_safetensors(path, [TensorSpec(k, s, dtype, produce(i, s)) for i, (k, s) in enumerate(shapes.items())], {})


def child(name: str, path: Path) -> None:
    base = memory()
    cfg = get_entry(name).config
    with torch.device("meta"):
        net = PEViT(cfg)
    net.load_state_dict(read_tensors(path), strict=True, assign=True)
    net.eval().requires_grad_(False)
    loaded = memory()
    dtype = net.pos_embed.dtype
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    x = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)).to(dtype)
    t = time.perf_counter()
    with torch.inference_mode():
        net.embedding(x)
    seconds, inferred = time.perf_counter() - t, memory()
    print(json.dumps({"base": base, "loaded": loaded, "inferred": inferred, "weight_bytes": weight_bytes, "infer_s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rope_i_vit_g14_pn_ap_c1_pe-core")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model, args.child)
    rows = []
    print(f"# {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| dtype | weights GiB | baseline RSS | RSS after load | RSS after 1st inference | RssAnon | RssFile | "
          "(RSS - baseline) / weights | goal <= 1.15 | 1st inference s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtype:
        with tempfile.TemporaryDirectory(prefix="pe-zoo-mem-", dir=args.workdir) as tmp:
            path = Path(tmp) / "weights.safetensors"
            write_weights(args.model, getattr(torch, dtype_name), path)
            cmd = [sys.executable, __file__, "--model", args.model, "--child", str(path)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            r = json.loads(res.stdout.strip().splitlines()[-1])
        b, i, w = r["base"]["VmRSS"], r["inferred"], r["weight_bytes"]
        ratio = (i["VmRSS"] - b) / w
        print(f"| {dtype_name} | {w / GiB:.2f} | {b / GiB:.2f} | {r['loaded']['VmRSS'] / GiB:.2f} | {i['VmRSS'] / GiB:.2f} | "
              f"{i['RssAnon'] / GiB:.2f} | {i['RssFile'] / GiB:.2f} | {ratio:.3f} | {'met' if ratio <= 1.15 else 'NOT met'} | "
              f"{r['infer_s']:.1f} |", flush=True)
        rows.append({"model": args.model, "dtype": dtype_name, "weights GiB": round(w / GiB, 3),
                     "RSS after 1st inference - baseline, x weights": round(ratio, 3),
                     "RssAnon GiB": round(i["RssAnon"] / GiB, 3), "RssFile GiB": round(i["RssFile"] / GiB, 3),
                     "goal <= 1.15": "met" if ratio <= 1.15 else "NOT met", "1st inference s": round(r["infer_s"], 2)})
    print(f"wrote {write_result('infer_memory', rows, notes=args.notes)}")


if __name__ == "__main__":
    main()
