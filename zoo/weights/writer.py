"""Write a safetensors file tensor by tensor, atomically, holding one tensor in memory at a time.

The format: an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of
every tensor, plus ``__metadata__``) padded with spaces to a multiple of 8 bytes, then the raw
little-endian bytes of each tensor. Everything in the header is known before any data is read, so
the data can follow in a stream.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import signal
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.fileio import SAFETENSORS_CODES, create_temp, stale_temp
from zoo.weights.errors import OutputError

log = logging.getLogger("zoo")

DTYPE_CODES = SAFETENSORS_CODES


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its name, shape and dtype, and how to produce it (called once, when written)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def build_header(specs: Sequence[TensorSpec], metadata: Mapping[str, str]) -> bytes:
    """The length prefix and padded JSON header for ``specs`` written in the given order."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for s in specs:
        if s.dtype not in DTYPE_CODES:
            raise ValueError(f"tensor {s.name!r}: dtype {s.dtype} cannot be stored in safetensors")
        header[s.name] = {"dtype": DTYPE_CODES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted writes of ``path`` left behind; return them.

    A temporary file (``.<name>.<pid>.<random>.partial``) is stale when the process named in it is
    gone and no process holds its lock; a live write is never touched.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if stale_temp(tmp, pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            log.info(f"removed {tmp}, left by an interrupted write (process {pid})")
    return removed


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    created = []
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:  # a hard link never replaces an existing file: of two racing writers exactly one wins
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path} already exists (another process wrote it meanwhile); pass force=True (--force) to overwrite it"
        ) from None
    except OSError:  # a filesystem without hard links: claim the name exclusively, then move the data in
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, path)
    else:
        tmp.unlink()


def write_safetensors(
    path: str | os.PathLike,
    specs: Sequence[TensorSpec],
    metadata: Mapping[str, str],
    *,
    overwrite: bool = True,
    before_replace: Callable[[], None] | None = None,
) -> tuple[int, str]:
    """Write ``specs`` to ``path`` through a temporary file in the same folder; return (size, sha256).

    Tensors are produced and written one at a time, widest dtype first so every tensor is aligned.
    The file appears complete or not at all: on any failure (SIGTERM too, with ``exit_on_sigterm``)
    the temporary file is removed, and so are the folders this call created; ``path`` is left as it
    was. ``overwrite=False``: an existing ``path`` is never replaced, even by a writer racing this one
    (``FileExistsError``). ``before_replace`` runs just before the file replaces ``path`` (``overwrite=True``). Temporary files
    of earlier interrupted writes of ``path`` are removed first. A folder that cannot be written raises
    ``OutputError`` naming it.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian data; this writer only runs on little-endian machines")
    specs = sorted(specs, key=lambda s: -s.dtype.itemsize)  # stable: keeps the given order within a dtype
    path = Path(path)
    header = build_header(specs, metadata)
    digest = hashlib.sha256(header)
    created: list[Path] = []
    tmp: Path | None = None
    committing = False
    try:
        try:
            created = _make_folder(path.parent)
            remove_stale_partials(path)
            fd, tmp = create_temp(path)
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                for s in specs:
                    t = s.produce()
                    if tuple(t.shape) != s.shape or t.dtype != s.dtype:
                        raise RuntimeError(f"tensor {s.name!r} came out {tuple(t.shape)} {t.dtype}, announced {s.shape} {s.dtype}")
                    data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
                    f.write(data)
                    digest.update(data)
                    del t, data
                f.flush()
                os.fsync(f.fileno())
                if overwrite and before_replace is not None:
                    before_replace()
                committing = True
                _commit(tmp, path, overwrite)  # inside the lock, so no cleaner ever sees an unlocked live file
        except OSError as e:
            if isinstance(e, FileExistsError) and committing:  # another writer put the file in place first
                raise
            folder = path.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            reason = e.strerror or type(e).__name__
            if folder.exists() and not folder.is_dir():
                reason = "it is a file, not a folder"
            raise OutputError(f"cannot write {path.name} into the folder {folder}: {reason}", str(folder)) from None
    except BaseException:
        if tmp is not None and tmp.exists():
            tmp.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return len(header) + sum(s.nbytes for s in specs), digest.hexdigest()


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` (in the main thread), so that writes in progress
    remove their temporary files as on any error. Elsewhere, or outside the main thread, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["TensorSpec", "build_header", "create_temp", "exit_on_sigterm", "remove_stale_partials", "write_safetensors"]
