"""A bounded load test of `python -m zoo serve` on loopback: requests/s and latency at 8 concurrent clients.

    PYTHONPATH=$PWD python benchmarks/serve.py [--rows 100000] [--dim 512] [--clients 8] [--requests 800]

Writes a collection of random unit vectors (reused when present) and its index (`zoo index`), starts
`python -m zoo serve` in its own process on a free loopback port, then ``--clients`` threads (one
keep-alive connection each) send ``--requests`` requests in all, ``GET /search?image_row=N&k=10``
(no model needed: the query is a row of the collection), and stop. Each answer is checked (200, 10
results, the row itself first).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import build_collection  # noqa: E402
from results import summary, write_result  # noqa: E402

from zoo.collection.index import build_index  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"zoo serve exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("zoo serve did not start")


def client(port: int, rows: list[int], latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for row in rows:
        start = time.perf_counter()
        conn.request("GET", f"/search?image_row={row}&k=10")
        response = conn.getresponse()
        body = response.read()
        latencies.append((time.perf_counter() - start) * 1000)
        answer = json.loads(body) if response.status == 200 else None
        if answer is None or len(answer["results"]) != 10 or answer["results"][0]["row"] != row:
            errors.append(f"{row}: {response.status} {body[:200]!r}")
    conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--kind", choices=["flat", "ivfpq"], default="flat")
    p.add_argument("--dir", type=Path, default=Path("/tmp/pe-zoo-serve-bench"))
    p.add_argument("--notes", default="")
    args = p.parse_args()
    build_collection(args.dir, args.rows, args.dim)
    info = build_index(args.dir, kind=args.kind, progress=False)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "zoo", "serve", str(args.dir), "--port", str(port)], env=env,
                              stderr=subprocess.DEVNULL)  # it logs every request
    try:
        wait_ready(port, server)
        rng = np.random.default_rng(0)
        picks = rng.integers(0, args.rows, args.requests).tolist()
        client(port, picks[:8], [], [])  # warm-up: page cache, first index load
        latencies: list[float] = []
        errors: list[str] = []
        threads = [threading.Thread(target=client, args=(port, picks[i::args.clients], latencies, errors))
                   for i in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
    if errors:
        raise SystemExit(f"{len(errors)} bad answers, e.g. {errors[0]}")
    row = {"rows": args.rows, "dim": args.dim, "index": info.kind, "clients": args.clients, "requests": args.requests,
           "requests_per_s": round(args.requests / seconds, 1), "latency_ms": summary(latencies, 3),
           "p99_ms": float(f"{np.percentile(latencies, 99):.4g}")}
    print(json.dumps(row))
    print(f"wrote {write_result('serve', [row], notes=args.notes)}")


if __name__ == "__main__":
    main()
