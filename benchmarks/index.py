"""`zoo index` over N x D float16 random unit vectors: build time, memory, query latency and recall@10 vs the exact scan.

    PYTHONPATH=$PWD python benchmarks/index.py [--rows 1000000] [--dim 512] [--kind ivfpq] [--dir /tmp/pe-zoo-index-bench]

Writes the collection once (shards of 100,000 rows through the writer `embed` uses; reused when present),
builds the index (``build_index``: training, adding shard by shard, tuning nprobe to recall@10 0.95 on
held-out rows), then sends fresh random unit vectors (not in the collection) one at a time through the
index (``Searcher.top_k``: FAISS candidates re-scored exactly from the rows) and through the exact scan
(``top_k``), and measures recall@10 of the index against an exact ground truth of the same queries.
Random vectors are the hardest case for any approximate index: no clusters, nearest neighbours barely
nearer than the rest. Memory: the index file's size and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import summary, write_result  # noqa: E402

from zoo.collection.index import INDEX_META, Searcher, build_index, ground_truth  # noqa: E402
from zoo.collection.search import top_k  # noqa: E402
from zoo.collection.store import FORMAT, MANIFEST, write_manifest, write_shard  # noqa: E402

SHARD = 100_000


def build_collection(out: Path, rows: int, dim: int) -> None:
    if (out / MANIFEST).exists() and json.loads((out / MANIFEST).read_text())["rows"] == rows \
            and json.loads((out / MANIFEST).read_text())["dim"] == dim:
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shards = -(-rows // SHARD)
    for s in range(shards):
        n = min(SHARD, rows - s * SHARD)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        write_shard(out, s, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16),
                    [f"images/{s:05d}/{i:06d}.jpg" for i in range(n)], [])
    settings = {"format": FORMAT, "model": "generated", "weights_sha256": "", "what": "clip", "normalize": True,
                "dtype": "float32", "size": [224, 224], "dim": dim, "store_dtype": "float16", "shard_size": SHARD,
                "num_inputs": rows, "inputs_sha256": ""}
    write_manifest(out, settings, shards)


def p99(samples: list[float]) -> float:
    return float(f"{np.percentile(samples, 99):.4g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kind", choices=["flat", "ivfpq"], default=None, help="default: by size, as `zoo index`")
    p.add_argument("--queries", type=int, default=200, help="index queries timed (and scored for recall)")
    p.add_argument("--exact-queries", type=int, default=5, help="exact-scan queries timed")
    p.add_argument("--dir", type=Path, default=Path("/tmp/pe-zoo-index-bench"))
    p.add_argument("--notes", default="")
    args = p.parse_args()
    t = time.perf_counter()
    build_collection(args.dir, args.rows, args.dim)
    print(f"collection {args.dir}: {args.rows:,} x {args.dim} float16 ready in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    info = build_index(args.dir, kind=args.kind, rebuild=True)
    build_s = time.perf_counter() - t
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    meta = json.loads((args.dir / INDEX_META).read_text())
    print(f"built {info.kind} in {build_s:.1f} s, recall@10 on held-out rows {info.recall:.3f}, {info.params}", flush=True)

    searcher = Searcher(args.dir)
    assert searcher.method == "index", searcher.reason
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    latency, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(searcher.top_k(q[None], 10)[0][1])
        latency.append((time.perf_counter() - t) * 1000)
    truth = ground_truth(searcher.rows, queries, 10)
    recall = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / 10 for f, g in zip(found, truth)]))
    exact = []
    for q in queries[:args.exact_queries]:
        t = time.perf_counter()
        top_k(searcher.rows, q, 10)
        exact.append((time.perf_counter() - t) * 1000)
    row = {
        "rows": args.rows, "dim": args.dim, "kind": info.kind,
        "params": ", ".join(f"{k} {v}" for k, v in info.params.items()),
        "build_s": round(build_s, 1), "index_mb": round((args.dir / meta["file"]).stat().st_size / 2**20, 1),
        "peak_rss_mb": round(peak_build), "recall@10": round(recall, 3), "recall@10_held_out_rows": round(info.recall, 3),
        "index_ms": summary(latency, 3), "index_p99_ms": p99(latency), "exact_ms": summary(exact, 3),
    }
    print(json.dumps(row), flush=True)
    path = write_result("index", [row], notes=args.notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
