"""The exact cosine top-k over a collection's memory-mapped shards, in bounded memory (the search index's
ground truth and its fallback)."""

from __future__ import annotations

import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger("zoo")
CHUNK_ROWS = 512  # rows converted to float32 at a time: small enough to stay in the CPU cache
MAX_THREADS = 8  # the scan is memory-bound: more threads stop helping


def top_k(rows, query: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, row indices)`` of the ``k`` rows most cosine-similar to ``query``, best first (ties: lower row first).

    ``rows`` is a ``MappedRows`` (or any [N, D] array); it is read ``CHUNK_ROWS`` rows at a time, so memory
    stays bounded whatever N. Rows of zero length score 0; rows holding NaN or inf are skipped, with a
    warning that says how many.
    """
    q = torch.as_tensor(np.asarray(query, dtype=np.float32)).reshape(-1)
    if q.numel() != rows.shape[1]:
        raise ValueError(f"the query has {q.numel()} values but the collection's rows have {rows.shape[1]}")
    q = q / q.norm().clamp_min(1e-12)
    shards = rows.shards if hasattr(rows, "shards") else [rows]
    offsets = np.cumsum([0] + [len(x) for x in shards])
    threads = torch.get_num_threads()
    local = threading.local()

    def scan(i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if not hasattr(local, "buf"):
            local.buf = torch.empty(CHUNK_ROWS, q.numel())
        s, index, skipped = _scan_shard(shards[i], q, k, local.buf)
        return s, index + int(offsets[i]), skipped

    # one single-threaded scan per core: tiny OpenMP regions stall badly on a busy machine, plain threads do not
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():  # torch.from_numpy warns about read-only maps; blocks are only read
            warnings.simplefilter("ignore", UserWarning)
            with ThreadPoolExecutor(max(1, min(threads, len(shards), MAX_THREADS))) as pool:
                found = list(pool.map(scan, range(len(shards))))
    finally:
        torch.set_num_threads(threads)
    skipped = sum(f[2] for f in found)
    if skipped:
        log.warning(f"search skipped {skipped} of {int(offsets[-1])} rows holding NaN or inf values (they can never match)")
    best_s = torch.cat([f[0] for f in found]).numpy()
    best_i = torch.cat([f[1] for f in found]).numpy()
    order = np.lexsort((best_i, -best_s))[:k]  # score descending, then row ascending
    return best_s[order], best_i[order]


def _scan_shard(shard: np.ndarray, q: torch.Tensor, k: int, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The rows of one shard scoring at least its k-th best (ties included, so that ties go to the lower row),
    and how many rows it skipped for a NaN or inf score."""
    n = len(shard)
    if n == 0:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), 0
    dots, norms = torch.empty(n), torch.empty(n)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        block = buf[: stop - start]
        block.copy_(torch.from_numpy(np.ascontiguousarray(shard[start:stop])))
        torch.mv(block, q, out=dots[start:stop])
        torch.linalg.vector_norm(block, dim=1, out=norms[start:stop])
    scores = dots / norms.clamp_min(1e-12)
    finite = torch.isfinite(scores)
    valid = scores[finite]
    if len(valid) == 0:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), n
    index = torch.nonzero(finite & (scores >= torch.topk(valid, min(k, len(valid))).values[-1])).flatten()
    return scores[index], index, n - len(valid)


__all__ = ["CHUNK_ROWS", "top_k"]
