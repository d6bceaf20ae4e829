"""Write a safetensors file tensor by tensor, atomically, holding one tensor in memory at a time.

The format: an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of
every tensor, plus ``__metadata__``) padded with spaces to a multiple of 8 bytes, then the raw
little-endian bytes of each tensor. Everything in the header is known before any data is read, so
the data can follow in a stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


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


def write_safetensors(path: str | os.PathLike, specs: Sequence[TensorSpec], metadata: Mapping[str, str]) -> tuple[int, str]:
    """Write ``specs`` to ``path`` through a temporary file in the same folder; return (size, sha256).

    Tensors are produced and written one at a time, widest dtype first so every tensor is aligned.
    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian data; this writer only runs on little-endian machines")
    specs = sorted(specs, key=lambda s: -s.dtype.itemsize)  # stable: keeps the given order within a dtype
    path = Path(path)
    header = build_header(specs, metadata)
    digest = hashlib.sha256(header)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
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
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(header) + sum(s.nbytes for s in specs), digest.hexdigest()


__all__ = ["DTYPE_CODES", "TensorSpec", "build_header", "write_safetensors"]
