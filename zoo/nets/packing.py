"""oneDNN-packed linear weights for CPU inference, invisible from outside.

A ``Linear`` keeps its weight an ordinary ``nn.Parameter`` over a plain strided tensor, always. When a
CPU call needs no gradient, it multiplies by a second form of the weight in oneDNN's packed (blocked)
layout, made on the first such call and kept beside the layer while the weight stays the same tensor
(same storage, place in it, shape, dtype) at the same version (torch bumps a tensor's version counter on
every in-place write: optimizer steps, ``copy_``, ``load_state_dict``, ``nn.init``). A call that needs
gradients, or a weight with a pending ``.grad``, runs plain ``F.linear`` and drops the packed form (so
torch's fused optimizers, which write without bumping the version, are covered in a training loop).
Tracing, compiling and exporting always see plain ``F.linear``.

Memory: where the plain weight still lies untouched in a memory-mapped weights file (how the zoo
loads), its pages are dropped from the process once packed (``MADV_DONTNEED``, only when no page was
written since it was mapped): the tensor stays valid and exact, and any later read maps the pages again
from the file. So resident memory after the first
inference stays about one copy of the weights. A weight in ordinary memory (built, converted or trained
in memory) is held twice while packed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct
import sys
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

# oneDNN's packed-weight linear (what inductor's freezing uses): 15-30% faster than addmm on CPU.
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...), or ``platform.processor()`` off Linux."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _float32_packing_pays() -> bool:
    """Whether float32 linears should run on oneDNN-packed weights rather than plain ``F.linear``.

    Plain float32 ``F.linear`` is MKL's sgemm. On Intel CPUs that beats oneDNN's packed float32 kernel
    (an AMX Xeon, 577 rows: 291 against 235 GFLOP/s median, ``benchmarks/matmul.py``); MKL is Intel's own
    library and takes generic paths on other vendors' CPUs, where the packed path is the faster one
    (AMD EPYC, docs/speed.md). bfloat16 always packs: oneDNN is torch's bfloat16 kernel either way.
    """
    return not (torch.backends.mkl.is_available() and "intel" in _cpu_vendor().lower())


# --------------------------------------------------------------------------- memory
try:  # glibc keeps freed heap pages mapped; malloc_trim hands them back (elsewhere: nothing to do)
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError, TypeError):
    _malloc_trim = None

_MADV_DONTNEED = 4  # unmap: a file page comes back from the file on the next read, a written page would be lost
_madvise = None
if sys.platform.startswith("linux"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        pass


def _file_pages(start: int, end: int) -> bool:
    """Whether every resident page in [start, end) is still the mapped file's own page (none written,
    none swapped), from ``/proc/self/pagemap``: bit 63 present, 62 swapped, 61 file page."""
    first, count = start // mmap.PAGESIZE, (end - start) // mmap.PAGESIZE
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            data = os.pread(fd, 8 * count, 8 * first)
        finally:
            os.close(fd)
    except OSError:
        return False
    if len(data) != 8 * count:
        return False
    for entry in struct.unpack(f"{count}Q", data):
        if (entry >> 62) & 1 or ((entry >> 63) & 1 and not (entry >> 61) & 1):
            return False
    return True


def _hand_back_file_pages(t: torch.Tensor) -> None:
    """If ``t``'s bytes are unwritten pages of a file mapping, drop them from this process's memory (the
    next read maps them again from the file, unchanged; the OS keeps or reclaims its cached copy as with
    any file); a tensor in ordinary memory, or with any page written since it was mapped, is left alone.
    (Unlike ``MADV_PAGEOUT``, this also works on pages of a file written moments ago, not yet on disk.)"""
    if _madvise is None:
        return
    ptr, size = t.data_ptr(), t.numel() * t.element_size()
    start = -(-ptr // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
    end = (ptr + size) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start and _file_pages(start, end):
        _madvise(start, end - start, _MADV_DONTNEED)


# --------------------------------------------------------------------------- the packed copies
class _Packed(NamedTuple):
    key: tuple  # the plain weight the copy was made from: storage, offset, shape, stride, dtype, version
    storage: StorageWeakRef  # keeps the storage's address from being reused while the key names it
    weight: torch.Tensor  # oneDNN's packed layout


# Linear -> its packed weight. Held here, not on the module: state, copies and pickles never see it.
_PACKED: weakref.WeakKeyDictionary[nn.Module, _Packed] = weakref.WeakKeyDictionary()


def _recording() -> bool:
    """Whether this call is being traced, compiled, exported or transformed (vmap, torch.func): plain ops only."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._are_functorch_transforms_active()
    )


def _key(w: torch.Tensor) -> tuple:
    return (w.untyped_storage()._cdata, w.storage_offset(), w.shape, w.stride(), w.dtype, w._version)


class Linear(nn.Linear):
    """``nn.Linear`` that runs on a oneDNN-packed copy of its weight for CPU inference.

    Same parameters, state dict and gradients as ``nn.Linear``; the weight stays a plain tensor. On a
    CPU call that needs no gradient (float32 or bfloat16 input of the weight's dtype, outside autocast,
    tracing, compiling and exporting) the layer multiplies by a packed copy of the weight, made on the
    first such call and remade whenever the weight changes (see the module docstring). An optional
    exact (erf) GELU and a residual add are fused into the matmul.

    ``Linear.pack = False`` (here, on one module, or through ``set_packing``) keeps plain ``F.linear``.
    ``Linear.pack_float32`` says whether float32 weights pack at all; its default is what measured
    faster on this kind of CPU (off on Intel CPUs, where plain ``F.linear`` is MKL's faster sgemm).
    """

    pack = True
    pack_float32 = _float32_packing_pays()

    def _packable(self, x: torch.Tensor) -> bool:
        w, b = self.weight, self.bias
        if not (_ONEDNN and self.pack) or x.device.type != "cpu" or w.device.type != "cpu" or x.numel() == 0:
            return False
        if x.dtype != w.dtype or not (w.dtype == torch.bfloat16 or (w.dtype == torch.float32 and self.pack_float32)):
            return False
        if torch.is_autocast_enabled("cpu") or w.is_inference():  # autocast picks the matmul; no version counter
            return False
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
            return False
        return w.grad is None

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed copy of the weight to run ``x`` on, made now if missing or stale; ``None``: run plain."""
        if _recording():
            return None
        if not self._packable(x):
            if torch.is_grad_enabled() or self.weight.grad is not None:
                _PACKED.pop(self, None)  # the weight may be written without a version bump (fused optimizers)
            return None
        w = self.weight
        key = _key(w)
        entry = _PACKED.get(self)
        if entry is not None and entry.key == key:
            return entry.weight
        _PACKED.pop(self, None)  # free the stale copy before making the new one
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, whatever mode this call runs in
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), x.numel() // x.shape[-1])
        _PACKED[self] = _Packed(key, StorageWeakRef(w.untyped_storage()), packed)
        _hand_back_file_pages(w)
        if _malloc_trim is not None:
            _malloc_trim(0)  # the packing's temporaries
        return packed

    def forward(self, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        w = self.packed_weight(x)
        if w is None:
            y = F.linear(x, self.weight, self.bias)
            y = F.gelu(y) if gelu else y
            return y if residual is None else residual + y
        if residual is not None and not gelu:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, self.bias, "add")
        y = torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        return y if residual is None else residual + y


def is_packed(module: nn.Module) -> bool:
    """Whether ``module`` (a ``Linear``) holds a packed copy of its weight now."""
    return module in _PACKED


def set_packing(module: nn.Module, enabled: bool) -> None:
    """Turn packing on or off for every ``Linear`` in ``module``; off also frees their packed copies."""
    for m in module.modules():
        if isinstance(m, Linear):
            m.pack = enabled
            if not enabled:
                _PACKED.pop(m, None)


__all__ = ["Linear", "is_packed", "set_packing"]
