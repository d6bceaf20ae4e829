"""Exact cosine top-k over a collection's memory-mapped shards, in bounded memory; text and image queries."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from zoo.collection.read import open_rows, read_manifest, shard_paths
from zoo.collection.store import CollectionError

log = logging.getLogger("zoo")
CHUNK_ROWS = 512  # rows converted to float32 at a time: small enough to stay in the CPU cache
MAX_THREADS = 8  # the scan is memory-bound: more threads stop helping


@dataclass(frozen=True)
class Hit:
    """One search result: ``rank`` (1 = best), cosine ``score``, the image ``path`` and its ``row`` in the collection;
    for a video row also ``start`` and ``end`` (seconds) of the moment it embeds."""

    rank: int
    score: float
    path: str
    row: int
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d if self.start is not None else {k: v for k, v in d.items() if k not in ("start", "end")}


class Hits(list):
    """The hits of ``search``, best first, with ``method`` (``"index"`` or ``"exact"``) and ``reason`` (why the exact scan)."""

    def __init__(self, hits: list[Hit], method: str, reason: str | None) -> None:
        super().__init__(hits)
        self.method, self.reason = method, reason


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


def check_weights(manifest: dict[str, Any], weights_dir) -> None:
    """Refuse to embed a query with weights other than those the collection was embedded with (by sha256)."""
    from zoo import weights
    from zoo.registry import get_entry

    entry = get_entry(manifest["model"])
    now = weights.verify(weights.resolve(entry, weights_dir, progress=False), entry.weights.sha256,
                         weights.converter_command(entry))
    if now != manifest["weights_sha256"]:
        raise CollectionError(
            f"the weights of {entry.name} are not the ones this collection was embedded with (sha256 {now[:12]}... now, "
            f"{manifest['weights_sha256'][:12]}... in its manifest): a query would be compared with rows of another "
            "model. Put back the weights it was embedded with, or embed the collection again (a new --out), "
            "or search with a vector of your own"
        )


def _text_query(manifest: dict[str, Any], text: str, device: str | None, weights_dir) -> np.ndarray:
    if manifest["what"] != "clip":
        raise CollectionError(
            f"a text query needs CLIP embeddings, but this collection holds {manifest['what']!r} rows: "
            f"embed it with `python -m zoo embed {manifest['model']} ... --what clip` to search it by text"
        )
    from zoo.clip import get_tokenizer, load_pretrained_clip

    model = load_pretrained_clip(manifest["model"], inference=True, device=device, dtype=getattr(torch, manifest["dtype"]),
                                 weights_dir=weights_dir)  # the collection's compute dtype, whatever the file's
    tokens = get_tokenizer(manifest["model"])([text]).to(device or "cpu")
    with torch.inference_mode():
        return model.encode_text(tokens).float().cpu().numpy()[0]


def _image_query(manifest: dict[str, Any], image, device: str | None, weights_dir) -> np.ndarray:
    from zoo.inference import open_image
    from zoo.loader import load_pretrained_model
    from zoo.transforms import classification_transform

    dtype = getattr(torch, manifest["dtype"])
    net, info = load_pretrained_model(manifest["model"], inference=True, dtype=dtype, device=device,
                                      new_size=tuple(manifest["size"]), weights_dir=weights_dir)
    x = classification_transform(info.size, info.rgb_stats)(open_image(image)).unsqueeze(0).to(device or "cpu", dtype)
    method = net.clip_embedding if manifest["what"] == "clip" else net.embedding
    with torch.inference_mode():
        return method(x).float().cpu().numpy()[0]


def search(
    directory: str | os.PathLike,
    query: np.ndarray | torch.Tensor | None = None,
    k: int = 10,
    *,
    text: str | None = None,
    image: str | os.PathLike | Any | None = None,
    device: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    exact: bool = False,
) -> Hits:
    """The ``k`` images of the collection in ``directory`` closest (cosine) to one query.

    Give exactly one of ``query`` (a vector of the collection's width), ``text`` (through the PE-Core text
    tower of the collection's model; the collection must hold ``clip`` rows) or ``image`` (a path or PIL
    image, embedded exactly like the collection). A text or image query is refused (``CollectionError``)
    when the model's weights are not those the collection records (sha256). A current index
    (``python -m zoo index``) answers unless ``exact=True``; otherwise the exact scan does. ``hits.method``
    says which, ``hits.reason`` why the scan.
    """
    if sum(q is not None for q in (query, text, image)) != 1:
        raise ValueError("give exactly one query: a vector, text=... or image=...")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if text is not None and not text.strip():
        raise ValueError("the text query is empty; give some words, e.g. --text \"a red bicycle\"")
    manifest = read_manifest(directory)
    if text is not None:
        if manifest["what"] == "clip":
            check_weights(manifest, weights_dir)
        query = _text_query(manifest, text, device, weights_dir)
    elif image is not None:
        check_weights(manifest, weights_dir)
        query = _image_query(manifest, image, device, weights_dir)
    rows = open_rows(directory, manifest)
    from zoo.collection.index import search_rows

    scores, index, method, reason = search_rows(directory, manifest, rows, query, k, exact=exact)
    shard_of = np.searchsorted(rows.offsets, index, side="right") - 1
    paths = {s: shard_paths(directory, manifest, s) for s in set(shard_of.tolist())}  # only the shards hit
    hits = [Hit(r, float(score), paths[s][int(i - rows.offsets[s])], int(i))
            for r, (score, i, s) in enumerate(zip(scores, index, shard_of), 1)]
    if manifest.get("video"):  # video rows: the moment each hit embeds
        from zoo.collection.media import with_times

        hits = with_times(directory, manifest, hits, rows.offsets, shard_of)
    return Hits(hits, method, reason)


__all__ = ["Hit", "Hits", "check_weights", "search", "top_k"]
