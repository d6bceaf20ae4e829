"""An approximate index inside a collection folder: FAISS, built shard by shard, tuned to a recall target.

```
DIR/index.json               what the index is: kind, parameters, recall reached, the collection state it covers
DIR/index-<token>.faiss      the FAISS index it names (a new token per write, so the pair is replaced atomically)
```
The index proposes candidates; their scores are computed again from the collection's own rows, so a hit's
score is the same cosine similarity the exact scan reports. ``flat`` (exact inner product over unit rows)
serves small collections, ``ivfpq`` (inverted lists of product-quantised codes, a few bytes a row) large
ones. The codes are FAISS's 4-bit "fast-scan" PQ (two values a sub-quantiser, 16 centroids each, scanned
with SIMD shuffles): the same bytes a row as 8-bit PQ over four values, about 4x faster to scan at the
same recall. ``nprobe`` (how many lists a query visits) and the candidate pool are tuned on held-out
queries against the exact scan: for each pool the smallest ``nprobe`` reaching the recall target (to
within 1/32), then the pair that answers fastest. faiss is imported only here, and only when used.

The faiss wheel is one library with run-time SIMD dispatch (``faiss.SIMDConfig``): its loader's log
lines "Could not load library with AVX512 support" only mean there is no separate per-CPU module; the
one it loads picks AVX2/AVX-512 itself. ``simd_level()`` says which, and ``index.json`` records it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.collection.read import MappedRows, open_rows, read_manifest
from zoo.collection.store import TMP_SUFFIX, CollectionError, read_json, write_atomic, write_json

log = logging.getLogger("zoo")

INDEX_META = "index.json"
INDEX_FORMAT = "pe-zoo-index/1"
KINDS = ("flat", "ivfpq")
FLAT_BELOW = 200_000  # rows: below this a flat index (exact, 4 bytes a value) is small and fast enough
RECALL_K = 10
QUERIES = 200  # held-out queries that measure recall@10
CANDIDATES = (100, 400, 1600)  # ivfpq: candidate pools re-scored exactly from the rows per query (at least 10 * k)
NPROBE_STEP = 32  # ivfpq: nprobe is tuned to within 1/NPROBE_STEP of the smallest reaching the target
TIMED = 100  # ivfpq: held-out queries sent one at a time to time each (nprobe, pool) that reaches the target
TRAIN_PER_LIST = 40  # ivfpq: training rows per inverted list (FAISS warns below 39)
MAX_TRAIN = 131_072  # at most this many training rows (256 MB of float32 at 512 values a row); caps nlist at 3276
FAISS_EXTRA = "pip install 'pe-zoo[index]'"


class IndexExtraMissing(OSError):
    """faiss is not installed."""


def _faiss():
    try:
        import faiss
    except ImportError:
        raise IndexExtraMissing(f"the search index needs faiss: {FAISS_EXTRA}") from None
    return faiss


def simd_level() -> str:
    """The SIMD code path faiss dispatches to on this CPU (e.g. ``AVX512_VPOPCNT``, ``AVX2``, ``NONE``)."""
    faiss = _faiss()
    config = getattr(faiss, "SIMDConfig", None)
    if config is None:  # before faiss 1.13: one module per level, named in the compile options
        return faiss.get_compile_options().strip()
    return config.get_level_name()


def collection_state(manifest: dict[str, Any]) -> dict[str, Any]:
    """What an index must cover to be current: the model, width, row count and every shard's name and rows."""
    return {"weights_sha256": manifest["weights_sha256"], "dim": manifest["dim"], "rows": manifest["rows"],
            "shards": [[s["embeddings"], s["rows"]] for s in manifest["shards"]]}


def _stale_reason(meta: dict[str, Any], state: dict[str, Any]) -> str | None:
    """Why an index described by ``meta`` does not cover the collection ``state`` (None: it does)."""
    have = meta["state"]
    if have == state:
        return None
    if (have["weights_sha256"], have["dim"]) != (state["weights_sha256"], state["dim"]):
        return "the index was built for other embeddings (model or width differ)"
    return (f"the index covers {have['rows']} rows in {len(have['shards'])} shards, the collection has {state['rows']} "
            f"rows in {len(state['shards'])} shards")


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows as float32 of length 1 (zero rows stay zero), the way the exact scan compares them."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def exact_scores(rows: MappedRows, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit ``query`` with ``rows[candidates]``, read shard by shard from the memory maps."""
    scores = np.empty(len(candidates), np.float32)
    shard_of = np.searchsorted(rows.offsets, candidates, side="right") - 1
    for s in np.unique(shard_of):
        pick = np.flatnonzero(shard_of == s)
        local = candidates[pick] - rows.offsets[s]
        scores[pick] = _unit(rows.shards[s][np.sort(local)])[np.argsort(np.argsort(local))] @ query
    return scores


def _rank(rows: MappedRows, query: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``candidates`` (row numbers, -1 = none) by exact score; ties: lower row first."""
    candidates = np.unique(candidates[candidates >= 0])
    scores = exact_scores(rows, query, candidates)
    order = np.lexsort((candidates, -scores))[:k]
    return scores[order], candidates[order]


def ground_truth(rows: MappedRows, queries: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """[Q, k] row numbers of the exact cosine top-``k`` of each unit query, one pass over the shards."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((len(q), 0), -np.inf)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    for first, block in rows.chunks(chunk):
        s = torch.from_numpy(_unit(block)) @ q.T
        best_s = torch.cat([best_s, s.T], 1)
        best_i = torch.cat([best_i, torch.arange(first, first + len(block)).expand(len(q), -1)], 1)
        best_s, pick = torch.topk(best_s, min(k, best_s.shape[1]), dim=1)
        best_i = torch.gather(best_i, 1, pick)
    return best_i.numpy()


@dataclass(frozen=True)
class IndexInfo:
    """What ``build_index`` wrote (or found current): kind, rows covered, recall@10 reached, parameters, seconds."""

    kind: str
    rows: int
    recall: float
    params: dict[str, Any]
    seconds: float
    added: int


def _auto_kind(rows: int) -> str:
    return "flat" if rows < FLAT_BELOW else "ivfpq"


def _pq_split(dim: int) -> int:
    """Sub-quantisers of the 4-bit PQ code: one per 2 values (half a byte each), a divisor of ``dim``."""
    m = max(1, dim // 2)
    while dim % m:
        m -= 1
    return m


def _sample_rows(rows: MappedRows, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct rows drawn at random (sorted row numbers)."""
    return np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))


def _read(rows: MappedRows, picks: np.ndarray) -> np.ndarray:
    """Unit float32 copies of the rows ``picks`` (sorted), gathered shard by shard."""
    shard_of = np.searchsorted(rows.offsets, picks, side="right") - 1
    parts = [rows.shards[s][picks[shard_of == s] - rows.offsets[s]] for s in np.unique(shard_of)]
    return _unit(np.concatenate(parts)) if parts else np.zeros((0, rows.shape[1]), np.float32)


def _new_index(kind: str, rows: MappedRows, rng: np.random.Generator):
    faiss = _faiss()
    n, dim = rows.shape
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    nlist = int(min(2 ** round(np.log2(max(4 * np.sqrt(n), 16))), max(n // TRAIN_PER_LIST, 1), MAX_TRAIN // TRAIN_PER_LIST))
    m = _pq_split(dim)
    factory = f"IVF{nlist},PQ{m}x4fs"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    sample = _read(rows, _sample_rows(rows, min(MAX_TRAIN, max(TRAIN_PER_LIST * nlist, 10_000)), rng))
    log.info(f"training {factory} on {len(sample)} rows")
    start = time.perf_counter()
    index.train(sample)
    log.info(f"trained in {time.perf_counter() - start:.1f} s")
    return index, {"nlist": nlist, "pq_bytes": (m + 1) // 2, "pq_bits": 4}


def _add_shards(index, rows: MappedRows, first_shard: int, progress: bool) -> int:
    """Add the rows of shards ``first_shard...`` in row order (FAISS numbers them on), a block at a time."""
    from tqdm.auto import tqdm

    todo = rows.shards[first_shard:]
    added = 0
    with tqdm(total=sum(len(s) for s in todo), unit="row", disable=not progress, desc="index") as bar:
        for shard in todo:
            for start in range(0, len(shard), 65_536):
                block = _unit(shard[start:start + 65_536])
                index.add(block)
                added += len(block)
                bar.update(len(block))
    return added


def _candidates(index, queries: np.ndarray, nprobe: int, want: int) -> np.ndarray:
    """[Q, want] row numbers the IVF index proposes (best estimate first; -1 pads), visiting ``nprobe`` lists."""
    _faiss().extract_index_ivf(index).nprobe = nprobe
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(want, index.ntotal))[1]


def _search(index, meta: dict[str, Any], rows: MappedRows, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(scores, rows)`` per unit query: the index's candidates re-scored exactly, best ``k`` first."""
    if meta["kind"] == "ivfpq":
        found = _candidates(index, queries, meta["params"]["nprobe"], max(meta["params"]["candidates"], 10 * k))
    else:
        found = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))[1]
    return [_rank(rows, q, c, k) for q, c in zip(queries, found)]


def _smallest_nprobe(ok, start: int, nlist: int) -> int | None:
    """The smallest ``nprobe`` >= ``start`` with ``ok(nprobe)``, to within 1/NPROBE_STEP (None: not even ``nlist``).

    Doubles from ``start`` until ``ok``, then bisects between the last failure and the first success.
    """
    lo, hi = start - 1, start
    while not ok(hi):
        if hi >= nlist:
            return None
        lo, hi = hi, min(2 * hi, nlist)
    while hi - lo > max(1, hi // NPROBE_STEP):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _median_ms(index, meta: dict[str, Any], rows: MappedRows, queries: np.ndarray, k: int) -> float:
    """Median milliseconds of ``_search`` over ``queries`` sent one at a time."""
    times = []
    for q in queries:
        start = time.perf_counter()
        _search(index, meta, rows, q[None], k)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def _tune(index, meta: dict[str, Any], rows: MappedRows, target: float, rng: np.random.Generator) -> float:
    """Set ``meta``'s parameters to the fastest reaching recall@10 ``target`` on held-out queries; returns it.

    The queries are rows of the collection; each query's own row is left out of both result lists, so a
    row finding itself does not count. ivfpq: for each of the ``CANDIDATES`` pool sizes (re-scored
    exactly; the smaller pools are prefixes of the largest), the smallest ``nprobe`` that reaches the
    target (``_smallest_nprobe``); then each such pair answers ``TIMED`` queries one at a time and the
    fastest (median) is kept. ``meta["tuning"]`` records every pair tried: nprobe, pool, recall, ms.
    """
    picks = _sample_rows(rows, QUERIES, rng)
    queries = _read(rows, picks)
    k = min(RECALL_K, len(rows) - 1)
    if k < 1:
        return 1.0
    truth = [set(t) - {p} for t, p in zip(ground_truth(rows, queries, k + 1).tolist(), picks.tolist())]

    def recall(found: np.ndarray) -> float:
        got = [set(_rank(rows, q, c, k + 1)[1].tolist()) - {p} for q, c, p in zip(queries, found, picks.tolist())]
        return float(np.mean([len(t & g) / min(k, len(t)) for t, g in zip(truth, got)]))

    if meta["kind"] != "ivfpq":
        return recall(index.search(queries, min(k + 1, index.ntotal))[1])
    nlist = meta["params"]["nlist"]
    reached: dict[int, list[float]] = {}  # nprobe -> recall of each pool

    def recalls(nprobe: int) -> list[float]:
        if nprobe not in reached:  # each query's largest pool is scored exactly once; a pool is a prefix of it
            hits = np.zeros(len(CANDIDATES))
            found = _candidates(index, queries, nprobe, max(CANDIDATES))
            for q, c, p, t in zip(queries, found, picks.tolist(), truth):
                c = c[c >= 0]
                scores = exact_scores(rows, q, c)
                for j, pool in enumerate(CANDIDATES):
                    got = set(c[:pool][np.lexsort((c[:pool], -scores[:pool]))[:k + 1]].tolist()) - {p}
                    hits[j] += len(t & got) / min(k, len(t))
            reached[nprobe] = (hits / len(queries)).tolist()
            log.info(f"nprobe {nprobe}: recall@{k} " + ", ".join(f"{r:.3f} ({pool} candidates)"
                                                               for r, pool in zip(reached[nprobe], CANDIDATES)))
        return reached[nprobe]

    options, start = [], 1
    for i in reversed(range(len(CANDIDATES))):  # largest pool first: a smaller pool needs at least its nprobe
        nprobe = _smallest_nprobe(lambda p, i=i: recalls(p)[i] >= target, start, nlist)
        if nprobe is None:
            continue
        options.append((nprobe, CANDIDATES[i]))
        start = nprobe
    if not options:
        best = recalls(nlist)[-1]
        log.warning(f"recall@{k} {best:.3f} is below the target {target} even with every list probed")
        meta["params"].update(nprobe=nlist, candidates=max(CANDIDATES))
        meta["tuning"] = [[nlist, max(CANDIDATES), round(best, 4), None]]
        return best
    timed = queries[:TIMED]
    tried = []
    for nprobe, pool in options:
        meta["params"].update(nprobe=nprobe, candidates=pool)
        ms = _median_ms(index, meta, rows, timed, k)
        tried.append([nprobe, pool, round(recalls(nprobe)[CANDIDATES.index(pool)], 4), round(ms, 3)])
        log.info(f"nprobe {nprobe}, {pool} candidates: {ms:.2f} ms a query")
    nprobe, pool, best, _ = min(tried, key=lambda t: t[3])
    meta["params"].update(nprobe=nprobe, candidates=pool)
    meta["tuning"] = tried
    return best


def read_index_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The collection's ``index.json`` (None when it has no index)."""
    try:
        meta = read_json(Path(directory) / INDEX_META)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CollectionError(f"cannot read {Path(directory) / INDEX_META}: {e}; rebuild it: python -m zoo index {directory} --rebuild") from None
    if meta.get("format") != INDEX_FORMAT:
        raise CollectionError(f"{Path(directory) / INDEX_META} has format {meta.get('format')!r}; rebuild it: "
                              f"python -m zoo index {directory} --rebuild")
    return meta


def _write(directory: Path, index, meta: dict[str, Any]) -> None:
    """The index under a new name, then ``index.json`` naming it (the commit), then the old file goes."""
    faiss = _faiss()
    meta["file"] = f"index-{secrets.token_hex(4)}.faiss"
    write_atomic(directory / meta["file"], lambda f: f.write(faiss.serialize_index(index).tobytes()))
    write_json(directory / INDEX_META, meta)
    for path in [*directory.glob("index-*.faiss"), *directory.glob(f".index-*{TMP_SUFFIX}")]:
        if path.name != meta["file"]:  # the replaced index, and what an interrupted build left
            path.unlink(missing_ok=True)


def _load(directory: Path, meta: dict[str, Any]):
    faiss = _faiss()
    return faiss.read_index(str(directory / meta["file"]))


def build_index(
    directory: str | os.PathLike,
    *,
    kind: str | None = None,
    recall: float = 0.95,
    rebuild: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> IndexInfo:
    """Build (or bring up to date) the search index of the finished collection in ``directory``.

    ``kind``: ``flat`` or ``ivfpq`` (default: ``flat`` below ``FLAT_BELOW`` rows, else ``ivfpq``).
    ``recall``: the recall@10 target against the exact scan that chooses ``nprobe``. An existing index
    whose shards are a prefix of the collection's takes the new shards' rows (and is tuned again);
    any other change, or ``rebuild=True``, builds it anew. Rows are streamed shard by shard.
    """
    start = time.perf_counter()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 < recall <= 1:
        raise ValueError(f"--recall must be in (0, 1], got {recall}")
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest["rows"] == 0:
        raise CollectionError(f"{directory} holds no rows: there is nothing to index")
    rows = open_rows(directory, manifest)
    state = collection_state(manifest)
    kind = kind or _auto_kind(len(rows))
    old = None if rebuild else read_index_meta(directory)
    rng = np.random.default_rng(seed)
    if old is not None and old["kind"] == kind and _extends(old["state"], state):
        covered = len(old["state"]["shards"])
        if old["state"] == state and old["target"] == recall:
            log.info(f"{directory / INDEX_META} is current: {kind}, {state['rows']} rows, recall@10 {old['recall']:.3f}")
            return IndexInfo(kind, state["rows"], old["recall"], old["params"], time.perf_counter() - start, 0)
        index, meta = _load(directory, old), {**old, "params": dict(old["params"])}
        log.info(f"adding the rows of {len(state['shards']) - covered} new shards to {directory / old['file']}")
    else:
        index, params = _new_index(kind, rows, rng)
        meta, covered = {"format": INDEX_FORMAT, "kind": kind, "params": params}, 0
    added = _add_shards(index, rows, covered, progress)
    reached = _tune(index, meta, rows, recall, rng)
    faiss = _faiss()
    meta.update(state=state, target=recall, recall=round(reached, 4), queries=QUERIES, faiss=faiss.__version__,
                simd=simd_level())
    _write(directory, index, meta)
    _CACHE.clear()
    seconds = time.perf_counter() - start
    log.info(f"wrote {directory / meta['file']}: {kind} over {state['rows']} rows, recall@10 {reached:.3f} "
             f"({meta['params']}), {seconds:.1f} s")
    return IndexInfo(kind, state["rows"], reached, meta["params"], seconds, added)


def _extends(have: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether the collection ``state`` is the indexed one with shards added at the end."""
    return ((have["weights_sha256"], have["dim"]) == (state["weights_sha256"], state["dim"])
            and state["shards"][:len(have["shards"])] == have["shards"])


_CACHE: dict[tuple[str, str], Any] = {}  # (folder, index file) -> the loaded FAISS index: loaded once per process
_CACHE_LOCK = threading.Lock()


class Searcher:
    """A collection opened for many queries: rows memory-mapped, the index loaded once when it is current.

    ``method`` is ``"index"`` or ``"exact"``; ``reason`` says why the exact scan is used (None with the index).
    """

    def __init__(self, directory: str | os.PathLike, *, exact: bool = False, manifest: dict[str, Any] | None = None,
                 rows: MappedRows | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest if manifest is not None else read_manifest(self.directory)
        self.rows = rows if rows is not None else open_rows(self.directory, self.manifest)
        self.index, self.meta = None, None
        self.method, self.reason = "exact", "--exact asked" if exact else None
        if not exact:
            self._open_index()

    def _open_index(self) -> None:
        meta = read_index_meta(self.directory)
        if meta is None:
            self.reason = f"no index (build one: python -m zoo index {self.directory})"
            return
        stale = _stale_reason(meta, collection_state(self.manifest))
        if stale:
            self.reason = f"the index is stale: {stale} (update it: python -m zoo index {self.directory})"
            log.warning(f"{self.reason}; using the exact scan")
            return
        try:
            with _CACHE_LOCK:
                key = (str(self.directory.resolve()), meta["file"])
                if key not in _CACHE:
                    _CACHE.clear()
                    _CACHE[key] = _load(self.directory, meta)
                self.index = _CACHE[key]
        except IndexExtraMissing:
            self.reason = f"faiss is not installed ({FAISS_EXTRA})"
            log.warning(f"{self.directory} has an index but {self.reason}; using the exact scan")
            return
        self.meta, self.method, self.reason = meta, "index", None

    def top_k(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(scores, rows)`` of the ``k`` rows most cosine-similar to each of ``queries`` [Q, D], best first."""
        from zoo.collection.scan import top_k

        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.rows.shape[1])
        if self.index is None:
            return [top_k(self.rows, q, k) for q in queries]
        return _search(self.index, self.meta, self.rows, _unit(queries), k)


def search_rows(directory: str | os.PathLike, manifest: dict[str, Any], rows: MappedRows, query: np.ndarray, k: int,
                exact: bool = False) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    """``(scores, row numbers, method, reason)`` of one query: through the index when current, else the exact scan."""
    from zoo.collection.scan import top_k

    searcher = Searcher(directory, exact=exact, manifest=manifest, rows=rows)
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if searcher.index is None or q.size != rows.shape[1]:  # the scan also words the error of a query of the wrong width
        scores, index = top_k(rows, q, k)
    else:
        scores, index = searcher.top_k(q[None], k)[0]
    return scores, index, searcher.method, searcher.reason


__all__ = ["INDEX_META", "KINDS", "IndexInfo", "Searcher", "build_index", "collection_state", "exact_scores",
           "ground_truth", "read_index_meta", "search_rows", "simd_level"]
