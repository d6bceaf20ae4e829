"""`python -m zoo index`: FAISS indexes inside a collection, recall against a brute-force scan, staleness, growth."""

import json
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.__main__ import main
from zoo.collection.index import INDEX_META, build_index, read_index_meta
from zoo.collection.store import FORMAT, write_manifest, write_shard

pytest.importorskip("faiss")


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_collection(out: Path, shards: list[np.ndarray], sha: str = "") -> None:
    """A finished collection of the given shards through the writer `embed` uses (a manifest over all of them)."""
    out.mkdir(parents=True, exist_ok=True)
    for s, rows in enumerate(shards):
        if not (out / f"shard-{s:05d}.json").exists():
            write_shard(out, s, rows, [f"img/{s}/{i}.jpg" for i in range(len(rows))], [])
    dim = shards[0].shape[1]
    settings = {"format": FORMAT, "model": "generated", "weights_sha256": sha, "what": "clip", "normalize": True,
                "dtype": "float32", "size": [224, 224], "dim": dim, "store_dtype": "float16", "shard_size": 10_000,
                "num_inputs": sum(map(len, shards)), "inputs_sha256": ""}
    write_manifest(out, settings, len(shards))


def brute_force(rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k in float64, written out here (ties: lower row first)."""
    x, q = rows.astype(np.float64), q.astype(np.float64)
    scores = x @ q / np.linalg.norm(x, axis=1) / np.linalg.norm(q)
    order = np.lexsort((np.arange(len(x)), -scores))[:k]
    return scores[order], order


def recall_at_10(out: Path, rows: np.ndarray, queries: np.ndarray) -> float:
    found = []
    for q in queries:
        hits = zoo.search(out, q, k=10)
        assert hits.method == "index"
        truth = brute_force(rows, q, 10)[1]
        found.append(len({h.row for h in hits} & set(truth.tolist())) / 10)
        scores = brute_force(rows, q, len(rows))[0]
        exact = dict(zip(brute_force(rows, q, len(rows))[1].tolist(), scores))
        assert max(abs(h.score - exact[h.row]) for h in hits) < 1e-5  # the exact scan's cosine, not PQ's estimate
    return float(np.mean(found))


def test_flat_index_exact_then_stale_then_incremental(tmp_path):
    rng = np.random.default_rng(0)
    shards = [unit_rows(rng, n, 48) for n in (700, 500)]
    out = tmp_path / "c"
    write_collection(out, shards)
    assert zoo.search(out, rng.standard_normal(48)).method == "exact"  # no index yet
    assert main(["index", str(out), "-q"]) == 0
    meta = read_index_meta(out)
    assert meta["kind"] == "flat" and meta["recall"] == 1.0 and meta["state"]["rows"] == 1200
    rows = np.concatenate(shards)
    for q in (rng.standard_normal(48), rows[123].astype(np.float64)):
        hits = zoo.search(out, q, k=7)
        scores, order = brute_force(rows, q, 7)
        assert hits.method == "index" and hits.reason is None
        assert [h.row for h in hits] == order.tolist() and np.abs(np.array([h.score for h in hits]) - scores).max() < 1e-5
        assert [h.path for h in hits] == [f"img/{r // 700}/{r % 700 if r < 700 else r - 700}.jpg" for r in order]
    # the collection grows by a shard (what `embed --append` does): the index is stale, search scans and says why
    new = unit_rows(rng, 300, 48)
    write_collection(out, [*shards, new])
    rows = np.concatenate([*shards, new])
    q = new[17].astype(np.float64)
    hits = zoo.search(out, q, k=3)
    assert hits.method == "exact" and "stale" in hits.reason and "1200 rows in 2 shards" in hits.reason
    assert "1500 rows in 3 shards" in hits.reason and hits[0].row == 1217
    info = build_index(out, progress=False)
    assert info.added == 300 and info.rows == 1500  # only the new shard's rows were added
    hits = zoo.search(out, q, k=5)
    assert hits.method == "index" and [h.row for h in hits] == brute_force(rows, q, 5)[1].tolist()
    assert zoo.search(out, q, k=5, exact=True).method == "exact"
    assert build_index(out, progress=False).added == 0  # current: nothing to do
    assert len(list(out.glob("index-*.faiss"))) == 1 and not list(out.glob(".*"))  # the old file and temporaries gone
    # other embeddings under the same shard names: rebuilt from scratch, not extended
    write_collection(out, [*shards, new], sha="other")
    assert "other embeddings" in zoo.search(out, q).reason
    assert build_index(out, progress=False).added == 1500


def test_ivfpq_reaches_recall_target_and_grows(tmp_path):
    rng = np.random.default_rng(1)
    shards = [unit_rows(rng, 600, 32) for _ in range(2)]
    out = tmp_path / "c"
    write_collection(out, shards)
    info = build_index(out, kind="ivfpq", recall=0.95, progress=False)
    meta = json.loads((out / INDEX_META).read_text())
    assert info.kind == meta["kind"] == "ivfpq" and meta["recall"] >= 0.95 and 1 <= meta["params"]["nprobe"] <= meta["params"]["nlist"]
    queries = rng.standard_normal((20, 32))  # held out: not rows of the collection
    assert recall_at_10(out, np.concatenate(shards), queries) >= 0.9
    new = unit_rows(rng, 300, 32)
    write_collection(out, [*shards, new])
    assert zoo.search(out, queries[0]).method == "exact"
    assert build_index(out, kind="ivfpq", progress=False).added == 300
    assert recall_at_10(out, np.concatenate([*shards, new]), queries[:10]) >= 0.9
    assert zoo.search(out, new[5], k=1)[0].row == 1205


def test_errors(tmp_path, capsys):
    out = tmp_path / "c"
    write_collection(out, [unit_rows(np.random.default_rng(2), 50, 8)])
    assert main(["index", str(tmp_path / "none")]) == 1
    assert "holds no pe-zoo collection" in capsys.readouterr().err
    assert main(["index", str(out), "--recall", "1.5"]) == 1
    assert "--recall must be in (0, 1]" in capsys.readouterr().err
    (out / INDEX_META).write_text("{broken")
    assert main(["index", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rebuild" in err
    assert main(["index", str(out), "-q", "--rebuild"]) == 0 and read_index_meta(out)["kind"] == "flat"


def test_smallest_nprobe_doubles_then_bisects():
    from zoo.collection.index import NPROBE_STEP, _smallest_nprobe

    for need, nlist in ((1, 64), (5, 64), (37, 64), (700, 1000), (1000, 1000), (2900, 3276)):
        asked = []
        got = _smallest_nprobe(lambda p, asked=asked, need=need: asked.append(p) or p >= need, 1, nlist)
        assert need <= got <= need + max(1, need // NPROBE_STEP), (need, got)
        assert len(asked) <= 2 * np.log2(nlist) + 2  # doubling, then bisection: not a walk over every nprobe
    assert _smallest_nprobe(lambda p: p >= 40, 16, 64) == 40  # starts from a bound a larger pool found
    assert _smallest_nprobe(lambda p: False, 1, 64) is None  # not even every list


def test_ivfpq_is_fast_scan_tuned_to_the_fastest_pair(tmp_path):
    import faiss

    rng = np.random.default_rng(3)
    out = tmp_path / "c"
    write_collection(out, [unit_rows(rng, 1500, 32)])
    build_index(out, kind="ivfpq", recall=0.9, progress=False)
    meta = read_index_meta(out)
    index = faiss.read_index(str(out / meta["file"]))
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFPQFastScan)  # 4-bit codes scanned with SIMD
    assert meta["params"]["pq_bits"] == 4 and meta["params"]["pq_bytes"] == 8  # 16 sub-quantisers of 2 values
    tried = meta["tuning"]
    assert tried and all(recall >= 0.9 and ms > 0 for _, _, recall, ms in tried)
    fastest = min(tried, key=lambda t: t[3])
    assert [meta["params"]["nprobe"], meta["params"]["candidates"], meta["recall"]] == fastest[:3]
    assert meta["simd"] == faiss.SIMDConfig.get_level_name()


def test_faiss_uses_the_cpus_vector_instructions():
    """The wheel's one library dispatches at run time: on a CPU with AVX2 it must not run the generic code."""
    from zoo.collection.index import simd_level

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if "avx2" not in flags:
        pytest.skip("no AVX2 on this CPU")
    level = simd_level()
    assert level != "NONE" and ("AVX2" in level or "AVX512" in level), level
    if "avx512f" in flags:
        assert "AVX512" in level, level
