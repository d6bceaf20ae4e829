"""Time ``zoo.search`` over a generated collection: N stored D-d float16 embeddings (default 1,000,000 x 1024).

    PYTHONPATH=$PWD python benchmarks/search.py [--rows 1000000] [--dim 1024] [--dir /tmp/pe-zoo-search-bench]

Writes the collection once (shards of 10,000 rows through the same writer ``embed`` uses; reused when
present), then times queries: the first one (shards possibly not yet in the page cache) and repeats
(min / median / max), with the process's CPU time per query and the machine's load average
(on a shared machine the wall time follows the load; the CPU time does not). A query = one vector, ``k=10``, through ``zoo.search`` (manifest, memory maps,
exact cosine scan, paths of the hits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from benchmarks.results import summary, write_result  # noqa: E402
from zoo.collection.store import FORMAT, MANIFEST, write_manifest, write_shard  # noqa: E402


def build(out: Path, rows: int, dim: int, shard_size: int) -> None:
    if (out / MANIFEST).exists() and json.loads((out / MANIFEST).read_text())["rows"] == rows:
        return
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    num_shards = -(-rows // shard_size)
    for s in range(num_shards):
        n = min(shard_size, rows - s * shard_size)
        x = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
        write_shard(out, s, x, [f"images/{s:05d}/{i:05d}.jpg" for i in range(n)], [])
    settings = {"format": FORMAT, "model": "generated", "weights_sha256": "", "what": "clip", "normalize": False,
                "dtype": "float32", "size": [0, 0], "dim": dim, "store_dtype": "float16", "shard_size": shard_size,
                "num_inputs": rows, "inputs_sha256": ""}
    write_manifest(out, settings, num_shards)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--dir", type=Path, default=Path("/tmp/pe-zoo-search-bench"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = p.parse_args()
    t = time.perf_counter()
    build(args.dir, args.rows, args.dim, 10_000)
    print(f"collection {args.dir}: {args.rows:,} x {args.dim} float16 ready in {time.perf_counter() - t:.1f} s "
          f"(torch threads {torch.get_num_threads()})")
    rng = np.random.default_rng(1)
    times, cpu = [], []
    for r in range(args.repeats + 1):
        q = rng.standard_normal(args.dim).astype(np.float32)
        t, c = time.perf_counter(), time.process_time()
        hits = zoo.search(args.dir, q, k=10)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if r == 0:
            print(f"first query {times[0]:.3f} s; top hit {hits[0].path} score {hits[0].score:.4f}")
    rest = times[1:]
    print(f"query over {args.rows:,} rows, k=10: min {min(rest):.3f} s, median {statistics.median(rest):.3f} s, "
          f"max {max(rest):.3f} s ({len(rest)} queries); CPU time per query (all threads) median "
          f"{statistics.median(cpu[1:]):.3f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = [{"rows": args.rows, "dim": args.dim, "k": 10, "first query s": round(times[0], 3),
             "query s": summary(rest), "CPU s per query": summary(cpu[1:])}]
    print(f"wrote {write_result('search', rows, notes=args.notes)}")


if __name__ == "__main__":
    main()
