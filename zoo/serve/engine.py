"""The search engine behind ``zoo serve``: one opened collection, models loaded once, queries batched as they arrive."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.collection.index import Searcher
from zoo.collection.store import CollectionError

log = logging.getLogger("zoo.serve")

MAX_K = 1000
ROW_FIELDS = ("start", "end")  # a video row's segment (seconds), from the shard's "segments" record, passed through to results


class QueryError(ValueError):
    """A query this collection cannot answer (the HTTP layer answers 400 with its text)."""


@dataclass(frozen=True)
class Query:
    """One query: ``text``, ``image`` (a PIL image) or ``row`` (a row of the collection), and ``k``."""

    k: int
    text: str | None = None
    image: Any = None
    row: int | None = None


class Engine:
    """A collection opened once for many queries: its rows, index, paths and (on first use) its models."""

    def __init__(self, directory: str | os.PathLike, *, exact: bool = False, device: str | None = None,
                 weights_dir: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory)
        self.searcher = Searcher(self.directory, exact=exact)
        self.manifest = self.searcher.manifest
        self.device, self.weights_dir = device, weights_dir
        self._lock = threading.Lock()
        self._clip = self._net = None
        self._shard_info = lru_cache(maxsize=64)(self._read_shard)

    @property
    def rows(self) -> int:
        return len(self.searcher.rows)

    def info(self) -> dict[str, Any]:
        """What the page needs to know: model, rows, whether text works, which search method answers."""
        return {"model": self.manifest["model"], "rows": self.rows, "what": self.manifest["what"],
                "text": self.manifest["what"] == "clip", "method": self.searcher.method, "reason": self.searcher.reason}

    def _read_shard(self, shard: int) -> dict[str, Any]:
        entry = self.manifest["shards"][shard]
        meta = json.loads((self.directory / entry["paths"]).read_text(encoding="utf-8"))
        if len(meta["paths"]) != entry["rows"]:
            raise CollectionError(f"{self.directory / entry['paths']} does not match the manifest; embed the collection again")
        return meta

    def row_info(self, row: int) -> dict[str, Any]:
        """``{"path": ..., "row": ...}`` (plus ``start``/``end`` for a video row) of a valid row number."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is not in 0..{self.rows - 1}")
        offsets = self.searcher.rows.offsets
        shard = int(np.searchsorted(offsets, row, side="right")) - 1
        meta = self._shard_info(shard)
        local = row - int(offsets[shard])
        info = {"path": meta["paths"][local], "row": row}
        segment = (meta.get("segments") or [None] * len(meta["paths"]))[local]  # a video row: the moment it embeds
        if segment is not None:
            info.update({f: segment[f] for f in ROW_FIELDS})
        return info

    def _clip_model(self):
        with self._lock:
            if self._clip is None:
                from zoo.clip import get_tokenizer, load_pretrained_clip

                log.info(f"loading the text tower of {self.manifest['model']}")
                model = load_pretrained_clip(self.manifest["model"], inference=True, device=self.device,
                                             dtype=getattr(torch, self.manifest["dtype"]), weights_dir=self.weights_dir,
                                             progress_bar=False)
                self._clip = model, get_tokenizer(self.manifest["model"])
            return self._clip

    def _image_net(self):
        with self._lock:
            if self._net is None:
                from zoo.loader import load_pretrained_model
                from zoo.transforms import classification_transform

                log.info(f"loading {self.manifest['model']} for image queries")
                net, info = load_pretrained_model(self.manifest["model"], inference=True, dtype=getattr(torch, self.manifest["dtype"]),
                                                  device=self.device, new_size=tuple(self.manifest["size"]),
                                                  weights_dir=self.weights_dir, progress_bar=False)
                run = net.clip_embedding if self.manifest["what"] == "clip" else net.embedding
                self._net = run, classification_transform(info.size, info.rgb_stats)
            return self._net

    def check(self, query: Query) -> None:
        """Refuse a query before it is queued (wrong k, a text query on non-CLIP rows, a row out of range)."""
        if not 1 <= query.k <= MAX_K:
            raise QueryError(f"k must be in 1..{MAX_K}, got {query.k}")
        if query.text is not None:
            if not query.text.strip():
                raise QueryError("the text query is empty")
            if self.manifest["what"] != "clip":
                raise QueryError(f"text search needs CLIP rows; this collection holds {self.manifest['what']!r} rows "
                                 "(embed with --what clip); search by image instead")
        if query.row is not None and not 0 <= query.row < self.rows:
            raise QueryError(f"image_row {query.row} is not in 0..{self.rows - 1}")

    def vectors(self, queries: list[Query]) -> np.ndarray:
        """[Q, D] query vectors: the texts in one batch, the images in one batch, rows read from the collection."""
        out = np.zeros((len(queries), self.searcher.rows.shape[1]), np.float32)
        texts = [i for i, q in enumerate(queries) if q.text is not None]
        images = [i for i, q in enumerate(queries) if q.image is not None]
        for i, q in enumerate(queries):
            if q.row is not None:
                out[i] = self.searcher.rows[q.row]
        dtype = getattr(torch, self.manifest["dtype"])
        if texts:
            model, tokenizer = self._clip_model()
            tokens = tokenizer([queries[i].text for i in texts]).to(self.device or "cpu")
            with torch.inference_mode():
                out[texts] = model.encode_text(tokens).float().cpu().numpy()
        if images:
            run, transform = self._image_net()
            x = torch.stack([transform(queries[i].image) for i in images]).to(self.device or "cpu", dtype)
            with torch.inference_mode():
                out[images] = run(x).float().cpu().numpy()
        return out

    def answer(self, queries: list[Query]) -> list[dict[str, Any]]:
        """The JSON answer of each query: method, reason and results (rank, score, path, row, ...)."""
        found = self.searcher.top_k(self.vectors(queries), max(q.k for q in queries))
        answers = []
        for q, (scores, rows) in zip(queries, found):
            results = [{"rank": r, "score": float(s), **self.row_info(int(i))}
                       for r, (s, i) in enumerate(zip(scores[:q.k], rows[:q.k]), 1)]
            answers.append({"method": self.searcher.method, "reason": self.searcher.reason, "results": results})
        return answers


class Batcher:
    """Queries that arrive together are answered in one batch: a request waits at most ``wait_s`` for company."""

    def __init__(self, engine: Engine, max_batch: int = 32, wait_s: float = 0.005) -> None:
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.queue: asyncio.Queue[tuple[Query, asyncio.Future]] | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batches: list[int] = []  # sizes of the last batches run (the tests and the log read them)

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.task = self.loop.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, query: Query) -> dict[str, Any]:
        if self.loop is not asyncio.get_running_loop():  # first query, or a new event loop
            self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((query, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    break
            self.batches = (self.batches + [len(batch)])[-100:]
            try:
                answers = await loop.run_in_executor(None, self.engine.answer, [q for q, _ in batch])
            except Exception as e:  # noqa: BLE001 -- handed to each waiting request, which answers it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(answer)


__all__ = ["Batcher", "Engine", "MAX_K", "Query", "QueryError"]
