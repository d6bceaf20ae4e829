"""Read a finished collection back: paths in manifest order and their rows, memory-mapped shard by shard."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zoo.collection.store import FORMAT, MANIFEST, SETTINGS, CollectionError, read_json


class MappedRows:
    """The rows of a collection as one read-only [N, D] array, memory-mapped shard by shard.

    Index it like a numpy array (``rows[i]``, ``rows[a:b]``, ``rows[[i, j]]``: numpy arrays come back);
    ``np.asarray(rows)`` loads everything; ``chunks()`` walks it in bounded pieces; ``shards`` are the
    per-shard memory maps themselves.
    """

    def __init__(self, shards: list[np.ndarray], dim: int, dtype: np.dtype) -> None:
        self.shards = shards
        self.dtype = np.dtype(dtype)
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.shape = (int(self.offsets[-1]), dim)

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= max(len(self), 1)
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.shards[s][i - self.offsets[s]]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (bool, np.bool_)):
            raise IndexError("a boolean is not a row index: give an integer, a slice, integers or a boolean mask of every row")
        if isinstance(key, tuple):  # rows[i, j] / rows[:, :8]: select the rows, then index within them
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            return np.asarray(self._row(int(key)))
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            parts = [s[max(start - o, 0):max(stop - o, 0)] for s, o in zip(self.shards, self.offsets[:-1])]
            parts = [p for p in parts if len(p)]
            return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), self.dtype)
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"a boolean mask of shape {index.shape} does not match the {len(self)} rows")
            index = np.flatnonzero(index)
        elif index.size and not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"rows are indexed by integers, slices, integer arrays or a boolean mask, not {index.dtype} values")
        return np.stack([self._row(int(i)) for i in index.reshape(-1)]).reshape(*index.shape, self.shape[1]) \
            if index.size else np.zeros((*index.shape, self.shape[1]), self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole.astype(dtype) if dtype is not None else whole

    def chunks(self, rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` pieces of at most ``rows`` rows, in order, each a view of one shard's map."""
        for shard, offset in zip(self.shards, self.offsets[:-1]):
            for start in range(0, len(shard), rows):
                yield int(offset) + start, shard[start:start + rows]

    def __repr__(self) -> str:
        return f"MappedRows(shape={self.shape}, dtype={self.dtype}, shards={len(self.shards)})"


MANIFEST_TYPES = {"model": str, "weights_sha256": str, "what": str, "dtype": str, "store_dtype": str, "size": list,
                  "dim": int, "rows": int, "errors": int, "shards": list}
SHARD_TYPES = {"embeddings": str, "paths": str, "rows": int}


def _damaged(path: Path, problem: str) -> CollectionError:
    return CollectionError(f"{path} is damaged ({problem}); embed the collection again (a new --out)")


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` if it is a whole ``manifest.json`` of this format, else a ``CollectionError`` naming the problem.

    Every key is checked for its type, the dtypes and the row counts for sense, and every shard file name
    for being a plain name inside the folder (never an absolute path, a ``..`` or a hidden file).
    """
    if not isinstance(manifest, dict):
        raise _damaged(path, f"a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise CollectionError(f"{path} has format {manifest.get('format')!r}; this pe-zoo reads {FORMAT!r}")
    for key, kind in MANIFEST_TYPES.items():
        if not _is(manifest.get(key), kind):
            raise _damaged(path, f"{key!r} is missing or not a{'n' if kind is int else ''} {kind.__name__}")
    if manifest["store_dtype"] not in ("float16", "float32") or manifest["what"] not in ("embedding", "clip") \
            or manifest["dtype"] not in ("float32", "float16", "bfloat16"):
        raise _damaged(path, f"unknown what/dtype/store_dtype {manifest['what']!r}/{manifest['dtype']!r}/{manifest['store_dtype']!r}")
    if manifest["dim"] < 1 or len(manifest["size"]) != 2 or not all(_is(x, int) and x > 0 for x in manifest["size"]):
        raise _damaged(path, f"dim {manifest['dim']} or size {manifest['size']!r} is not positive")
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or not all(_is(shard.get(k), kind) for k, kind in SHARD_TYPES.items()):
            raise _damaged(path, f"shard {i} is not an object with 'embeddings', 'paths' and 'rows'")
        for name in (shard["embeddings"], shard["paths"]):
            if not name or name != os.path.basename(name) or name.startswith(".") or "\\" in name or "\0" in name:
                raise CollectionError(f"{path} names the shard file {name!r}, which is not a plain file name in the "
                                      "collection's folder: refused (a received collection cannot read files elsewhere)")
        if shard["rows"] < 0:
            raise _damaged(path, f"shard {i} has {shard['rows']} rows")
    if not isinstance(manifest.get("appends", []), list):
        raise _damaged(path, "'appends' is not a list")
    if sum(s["rows"] for s in manifest["shards"]) != manifest["rows"]:
        raise _damaged(path, f"the shards' rows do not add up to {manifest['rows']}")
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of a finished collection (a clear error for an unfinished or foreign folder)."""
    directory = Path(directory)
    try:
        manifest = read_json(directory / MANIFEST)
    except FileNotFoundError:
        if (directory / SETTINGS).exists():
            raise CollectionError(
                f"{directory} is an unfinished collection (no {MANIFEST} yet): run the same `python -m zoo embed` command again to finish it"
            ) from None
        raise CollectionError(f"{directory} holds no pe-zoo collection ({MANIFEST} missing); make one with `python -m zoo embed`") from None
    except (OSError, ValueError) as e:
        raise CollectionError(f"cannot read {directory / MANIFEST}: {e}") from None
    return check_manifest(manifest, directory / MANIFEST)


def open_rows(directory: str | os.PathLike, manifest: dict[str, Any]) -> MappedRows:
    """The memory-mapped rows of a finished collection (its paths are not read)."""
    directory = Path(directory)
    shards = []
    for shard in manifest["shards"]:
        path = directory / shard["embeddings"]
        try:
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CollectionError(f"cannot read {path} ({' '.join(str(e).split())}); embed the collection again") from None
        if rows.shape != (shard["rows"], manifest["dim"]) or rows.dtype != np.dtype(manifest["store_dtype"]):
            raise CollectionError(f"{path} holds {rows.dtype} rows of shape {rows.shape}, not the {manifest['store_dtype']} "
                                  f"{(shard['rows'], manifest['dim'])} that {MANIFEST} says; embed the collection again")
        shards.append(rows)
    return MappedRows(shards, manifest["dim"], np.dtype(manifest["store_dtype"]))


def shard_paths(directory: str | os.PathLike, manifest: dict[str, Any], shard: int) -> list[str]:
    """The image paths of one shard's rows, in row order."""
    entry = manifest["shards"][shard]
    try:
        paths = read_json(Path(directory) / entry["paths"])
    except (OSError, ValueError) as e:
        raise CollectionError(f"cannot read {Path(directory) / entry['paths']} ({e}); embed the collection again") from None
    paths = paths.get("paths") if isinstance(paths, dict) else None
    if not isinstance(paths, list) or len(paths) != entry["rows"] or not all(isinstance(p, str) for p in paths):
        raise CollectionError(f"{Path(directory) / entry['paths']} does not match {MANIFEST}; embed the collection again")
    return paths


def read_embeddings(directory: str | os.PathLike) -> tuple[list[str], MappedRows]:
    """``(paths, rows)`` of a finished collection: paths in manifest order, ``rows[i]`` the embedding of ``paths[i]``.

    ``rows`` is memory-mapped shard by shard (a collection larger than RAM is never loaded at once);
    ``np.asarray(rows)`` loads it whole.
    """
    manifest = read_manifest(directory)
    rows = open_rows(directory, manifest)
    paths = [p for s in range(len(manifest["shards"])) for p in shard_paths(directory, manifest, s)]
    return paths, rows


__all__ = ["MappedRows", "check_manifest", "open_rows", "read_embeddings", "read_manifest", "shard_paths"]
