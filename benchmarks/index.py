"""`zoo index` over N x D float16 unit vectors: build time, memory, query latency and recall@10 vs the exact scan.

    PYTHONPATH=$PWD python benchmarks/index.py [--rows 1000000] [--dim 512] [--data random|clustered] [--kind ivfpq]

Writes the collection once (shards of 100,000 rows through the writer `embed` uses; reused when present),
builds the index (``build_index``: training, adding shard by shard, tuning nprobe to recall@10 0.95 on
held-out rows), then sends fresh random unit vectors (not in the collection) one at a time through the
index (``Searcher.top_k``: FAISS candidates re-scored exactly from the rows) and through the exact scan
(``top_k``), and measures recall@10 of the index against an exact ground truth of the same queries.
Memory: the index file's size and the process's peak resident memory.

``--data random`` (the default): rows and queries are standard normal vectors scaled to length 1. They
have no clusters and their nearest neighbours are barely nearer than the rest, the hardest case for any
approximate index. ``--data clustered``: ``--centres`` (default 20,000) centres ``c_j`` are random unit
vectors; centre ``j`` is drawn with probability proportional to a log-normal weight ``exp(N(0, 1))`` (so
cluster sizes vary), and has a spread ``s_j`` uniform in [0.4, 0.9]; a row (or query) is
``unit(c_j + s_j * g / sqrt(D))`` with ``g`` standard normal in D dimensions. At 1,000,000 x 512 a query's
nearest row then has cosine about 0.6-0.85 (median about 0.74), in the range real image embeddings
show; the clusters are the only structure (no hierarchy among the centres), so real embeddings lie
somewhere between the two cases. Queries are fresh draws, never rows. The result file keeps one row
per data kind and size: a run replaces the row of its own kind and size and leaves the others.

Each row also says why the index needs what it needs: the median cosine of a query's 1st, 10th and
11th nearest rows, and the median fraction of the ``nlist`` lists a query must visit (in the coarse
quantiser's order) to reach the list holding each of its true top 10 (``lists_for_top10``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, summary, write_result  # noqa: E402

from zoo.collection.index import (  # noqa: E402
    INDEX_META,
    Searcher,
    build_index,
    ground_truth,
    simd_level,
)
from zoo.collection.search import top_k  # noqa: E402
from zoo.collection.store import FORMAT, MANIFEST, write_manifest, write_shard  # noqa: E402

SHARD = 100_000
SPREAD = (0.4, 0.9)  # clustered: a centre's spread (norm of the offset from it), uniform in this range


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Generator:
    """Unit vectors of one data kind: ``draw(rng, n)`` gives ``n`` float32 rows (see the module docstring)."""

    def __init__(self, data: str, dim: int, centres: int) -> None:
        self.data, self.dim = data, dim
        if data == "clustered":
            rng = np.random.default_rng(12345)  # the centres: the same for the rows and the queries
            self.centres = _unit(rng.standard_normal((centres, dim), dtype=np.float32))
            weights = rng.lognormal(0.0, 1.0, centres)
            self.weights = weights / weights.sum()
            self.spread = rng.uniform(*SPREAD, centres).astype(np.float32)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        g = rng.standard_normal((n, self.dim), dtype=np.float32)
        if self.data == "random":
            return _unit(g)
        j = rng.choice(len(self.centres), size=n, p=self.weights)
        return _unit(self.centres[j] + self.spread[j, None] * g / np.sqrt(self.dim))


def build_collection(out: Path, rows: int, dim: int, data: str = "random", centres: int = 20_000) -> None:
    model = "generated" if data == "random" else f"generated-{data}-{centres}"
    if (out / MANIFEST).exists():
        have = json.loads((out / MANIFEST).read_text())
        if (have["rows"], have["dim"], have["model"]) == (rows, dim, model):
            return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    gen = Generator(data, dim, centres)
    rng = np.random.default_rng(0)
    shards = -(-rows // SHARD)
    for s in range(shards):
        n = min(SHARD, rows - s * SHARD)
        write_shard(out, s, gen.draw(rng, n).astype(np.float16), [f"images/{s:05d}/{i:06d}.jpg" for i in range(n)], [])
    settings = {"format": FORMAT, "model": model, "weights_sha256": "", "what": "clip", "normalize": True,
                "dtype": "float32", "size": [224, 224], "dim": dim, "store_dtype": "float16", "shard_size": SHARD,
                "num_inputs": rows, "inputs_sha256": ""}
    write_manifest(out, settings, shards)


def p99(samples: list[float]) -> float:
    return float(f"{np.percentile(samples, 99):.4g}")


def lists_for_top10(index, queries: np.ndarray, top: np.ndarray, rows) -> float | None:
    """Median over queries of the fraction of lists visited, in the coarse quantiser's order, to reach all its top 10."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None  # a flat index has no lists
    order = ivf.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), ivf.nlist)[1]
    vecs = np.concatenate([rows[int(r)][None] for r in top.ravel()]).astype(np.float32)
    home = ivf.quantizer.search(_unit(vecs), 1)[1].reshape(top.shape)
    need = [max(int(np.flatnonzero(o == h)[0]) for h in hs) + 1 for o, hs in zip(order, home)]
    return float(f"{float(np.median(need)) / ivf.nlist:.3g}")


def merge_rows(row: dict) -> list[dict]:
    """The result file's rows with ``row`` in place of the one of the same data kind and size (random first)."""
    try:
        old = json.loads((RESULTS / "index.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        old = []
    kept = [r for r in old if "data" in r and (r["data"], r["rows"]) != (row["data"], row["rows"])]  # no kind: older
    return sorted([*kept, row], key=lambda r: (r["data"] != "random", r["rows"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--data", choices=["random", "clustered"], default="random", help="see the module docstring")
    p.add_argument("--centres", type=int, default=20_000, help="clustered: how many centres")
    p.add_argument("--kind", choices=["flat", "ivfpq"], default=None, help="default: by size, as `zoo index`")
    p.add_argument("--queries", type=int, default=200, help="index queries timed (and scored for recall)")
    p.add_argument("--exact-queries", type=int, default=5, help="exact-scan queries timed")
    p.add_argument("--dir", type=Path, default=None, help="default: /tmp/pe-zoo-index-bench-DATA")
    p.add_argument("--notes", default="")
    args = p.parse_args()
    args.dir = args.dir or Path(f"/tmp/pe-zoo-index-bench-{args.data}")
    load_start = os.getloadavg()[0]
    t = time.perf_counter()
    build_collection(args.dir, args.rows, args.dim, args.data, args.centres)
    print(f"collection {args.dir}: {args.rows:,} x {args.dim} float16 ready in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    info = build_index(args.dir, kind=args.kind, rebuild=True)
    build_s = time.perf_counter() - t
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    meta = json.loads((args.dir / INDEX_META).read_text())
    print(f"built {info.kind} in {build_s:.1f} s, recall@10 on held-out rows {info.recall:.3f}, {info.params}", flush=True)

    searcher = Searcher(args.dir)
    assert searcher.method == "index", searcher.reason
    queries = Generator(args.data, args.dim, args.centres).draw(np.random.default_rng(1), args.queries)
    latency, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(searcher.top_k(q[None], 10)[0][1])
        latency.append((time.perf_counter() - t) * 1000)
    truth = ground_truth(searcher.rows, queries, 11)
    cos = np.median([[float(_unit(searcher.rows[int(r)][None].astype(np.float32))[0] @ q) for r in t] for q, t in zip(queries, truth)], 0)
    truth = truth[:, :10]
    recall = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / 10 for f, g in zip(found, truth)]))
    exact = []
    for q in queries[:args.exact_queries]:
        t = time.perf_counter()
        top_k(searcher.rows, q, 10)
        exact.append((time.perf_counter() - t) * 1000)
    params = info.params
    row = {
        "data": args.data, "rows": args.rows, "dim": args.dim, "kind": info.kind,
        "params": ", ".join(f"{k} {v}" for k, v in params.items()),
        "lists_visited": round(params["nprobe"] / params["nlist"], 3) if "nprobe" in params else None,
        "lists_for_top10": lists_for_top10(searcher.index, queries, truth, searcher.rows),
        "cos_1st_10th_11th": [round(float(c), 4) for c in cos[[0, 9, 10]]],
        "build_s": round(build_s, 1), "index_mb": round((args.dir / meta["file"]).stat().st_size / 2**20, 1),
        "peak_rss_mb": round(peak_build), "recall@10": round(recall, 3), "recall@10_held_out_rows": round(info.recall, 3),
        "index_ms": summary(latency, 3), "index_p99_ms": p99(latency), "exact_ms": summary(exact, 3),
        "goal_met": bool(recall >= 0.95 and np.median(latency) < 10),
        "simd": simd_level(), "load_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(row), flush=True)
    path = write_result("index", merge_rows(row), notes=args.notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
