"""Memory-map a safetensors file with one mapping per tensor, so a tensor's pages leave memory with it.

``safetensors.safe_open`` maps the whole file once and every tensor is a view of that one mapping:
pages read once stay resident as long as any tensor of the file is alive, even after a layer has
replaced its weight (for example with a packed or converted copy). Here each tensor gets its own
private (copy-on-write) mapping, released when the tensor is.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import torch

from zoo.fileio import SAFETENSORS_DTYPES

_DTYPES = SAFETENSORS_DTYPES


def map_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, each memory-mapped on its own (pages read when used)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        start, size = 8 + n, os.fstat(f.fileno()).st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = _DTYPES.get(info.get("dtype")), info.get("shape")
            begin, end = (start + o for o in info.get("data_offsets", (0, -1)))
            count = 1
            for d in shape or ():
                count *= d
            if dtype is None or not isinstance(shape, list) or not start <= begin <= end <= size or end - begin != count * dtype.itemsize:
                raise ValueError(f"{path}: malformed safetensors entry {name!r} ({info}); the file is corrupt, rebuild it")
            if count == 0:
                tensors[name] = torch.empty(shape, dtype=dtype)
                continue
            aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
            buf = mmap.mmap(f.fileno(), end - aligned, access=mmap.ACCESS_COPY, offset=aligned)
            tensors[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=begin - aligned).view(shape)
    return tensors


__all__ = ["map_tensors"]
