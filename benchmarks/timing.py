"""The benchmarks' one clock: wall seconds of one call, synchronising CUDA around it."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn()`` once on ``device`` and returns its wall time in seconds."""

    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return run
