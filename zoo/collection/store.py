"""The output folder of a collection: settings, shards (``.npy`` rows + ``.json`` paths), manifest, errors.

```
DIR/settings.json         what the run embeds (written first; a restart must match it)
DIR/shard-00000.npy       rows of inputs [0, shard_size) that could be read, in input order
DIR/shard-00000.json      their paths (and the unreadable ones with the reason); written last: the shard's commit mark
DIR/manifest.json         written once, when every shard is there
DIR/errors.txt            one "path<TAB>reason" line per unreadable image (escaped: see ``escape_line``)
DIR/append.json           while an ``--append`` runs: which new inputs it embeds, from which shard on
```
Every file is written to a temporary name in the folder (``.NAME.PID.RANDOM.tmp``, locked while written)
and renamed into place, so a run stopped at any point leaves whole shards or none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from zoo.fileio import atomic_write, stale_temp

log = logging.getLogger("zoo")

FORMAT = "pe-zoo-collection/1"
SETTINGS = "settings.json"
MANIFEST = "manifest.json"
ERRORS = "errors.txt"
APPEND = "append.json"
TMP_SUFFIX = ".tmp"


class CollectionError(ValueError):
    """An output folder that cannot be used as asked (other settings, unfinished, not a collection)."""


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename it into place.

    The temporary file is named with this process's id and locked while written (``zoo.fileio.create_temp``),
    so ``remove_temporaries`` never takes a live writer's file.
    """
    atomic_write(path, write, suffix=TMP_SUFFIX)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode("utf-8")))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_shard(out: Path, index: int, rows: np.ndarray, paths: list[str], errors: list[tuple[str, str]],
                segments: list | None = None) -> None:
    """Shard ``index``: its rows (``.npy``) first, then its paths and errors (``.json``, the commit mark).

    ``segments`` (collections with videos): one record per row, ``None`` for an image (see ``zoo.collection.media``)."""
    if len(rows) != len(paths):
        raise ValueError(f"shard {index}: {len(rows)} rows but {len(paths)} paths")
    stem = shard_stem(index)
    write_atomic(out / f"{stem}.npy", lambda f: np.save(f, rows, allow_pickle=False))
    meta = {"rows": len(rows), "paths": paths, "errors": [list(e) for e in errors]}
    if segments is not None:
        meta["segments"] = segments
    write_json(out / f"{stem}.json", meta)


def shard_done(out: Path, index: int, dim: int, dtype: str) -> bool:
    """Whether shard ``index`` is committed and whole (its ``.json`` and an ``.npy`` of the recorded shape)."""
    stem = shard_stem(index)
    try:
        meta = read_json(out / f"{stem}.json")
        rows = np.load(out / f"{stem}.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return rows.shape == (meta.get("rows"), dim) and rows.dtype == np.dtype(dtype) and len(meta.get("paths", ())) == rows.shape[0]


def stale_temporaries(out: Path) -> list[Path]:
    """The temporary files in ``out`` that stopped runs left behind: named ``.NAME.PID.RANDOM.tmp`` with the
    process gone and no lock held. Another running process's files are never among them."""
    stale = []
    for tmp in out.glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name.split(".")
        if len(parts) >= 5 and stale_temp(tmp, parts[-3]):
            stale.append(tmp)
    return stale


def remove_temporaries(out: Path) -> None:
    """Delete the temporary files stopped runs left behind in ``out`` (never a live writer's)."""
    for tmp in stale_temporaries(out):
        tmp.unlink(missing_ok=True)
        log.debug(f"removed {tmp}, left by a stopped run")


def escape_line(text: str) -> str:
    """``text`` on one line of UTF-8: backslash, tab, newline and carriage return as ``\\\\ \\t \\n \\r``,
    bytes of a file name that are not UTF-8 as ``\\xNN``."""
    text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_manifest(out: Path, settings: dict[str, Any], num_shards: int) -> dict[str, Any]:
    """Assemble ``manifest.json`` and ``errors.txt`` from the committed shards (all must be there).

    ``errors.txt`` holds one ``path<TAB>reason`` line per unreadable image, both through ``escape_line``.
    """
    shards, errors, rows = [], [], 0
    for index in range(num_shards):
        stem = shard_stem(index)
        meta = read_json(out / f"{stem}.json")
        shards.append({"embeddings": f"{stem}.npy", "paths": f"{stem}.json", "rows": meta["rows"]})
        errors.extend(meta["errors"])
        rows += meta["rows"]
    text = "".join(f"{escape_line(path)}\t{escape_line(' '.join(str(reason).split()))}\n" for path, reason in errors)
    write_atomic(out / ERRORS, lambda f: f.write(text.encode("utf-8")))
    manifest = {**settings, "rows": rows, "errors": len(errors), "shards": shards}
    write_json(out / MANIFEST, manifest)
    return manifest


__all__ = [
    "APPEND", "CollectionError", "ERRORS", "FORMAT", "MANIFEST", "SETTINGS", "escape_line", "read_json", "remove_temporaries",
    "shard_done", "shard_stem", "stale_temporaries", "write_atomic", "write_json", "write_manifest", "write_shard",
]
