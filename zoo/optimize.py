"""zoo.optimize: the fastest inference callable for a net on its device and dtype."""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from zoo.nets.pe_vit import PEViT, set_packing

Mode = Literal["auto", "compile", "eager"]
METHODS = ("forward", "embedding", "clip_embedding", "forward_features")


class OptimizedNet:
    """Calls ``getattr(net, method)`` without gradients, eagerly or through ``torch.compile``.

    When ``compiled``: one static graph per input shape, built by inductor with ``freezing``
    (weights folded in as constants and pre-packed): change the net's weights afterwards and you
    must call ``zoo.optimize`` again.
    Falls back to eager, with a warning, where compilation is unavailable or fails.
    """

    def __init__(self, net: PEViT, method: str, use_compile: bool) -> None:
        self.net = net
        self.method = method
        self._eager = getattr(net, method)
        self.compiled = use_compile
        if self.compiled:
            set_packing(net, False)  # the graph holds its own frozen, packed weights: no second packed copy
            try:
                # dynamic=False: a static graph per input shape (torch keeps up to
                # torch._dynamo.config.recompile_limit of them, then runs eager).
                self._fn = torch.compile(self._eager, dynamic=False, options={"freezing": True})
            except Exception as err:  # e.g. torch.compile unsupported on this Python
                self._fall_back(err)

    def _fall_back(self, err: Exception) -> None:
        warnings.warn(
            f"zoo.optimize: torch.compile is unavailable here ({type(err).__name__}: {err}); "
            "running the eager net instead (correct, but slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        self.compiled = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if not self.compiled:
                return self._eager(x)
            self.net._grid(x)  # validates the input with the net's own error messages
            try:
                return self._fn(x)
            except Exception as err:  # compiler missing or failing: eager is still right
                self._fall_back(err)
                return self._eager(x)


def optimize(net: PEViT, *, method: str = "forward", mode: Mode = "auto") -> OptimizedNet:
    """The fastest inference callable ``f(x) == getattr(net, method)(x)`` for the net's device and dtype.

    ``mode="compile"``: inductor with freezing. ``mode="eager"``: the eager net, which on CPU already
    runs on oneDNN-packed weights with fused GELU and residual adds (float32 on Intel CPUs: MKL's
    sgemm, see ``Linear.pack_float32``). ``mode="auto"``: eager on CPU (inductor's frozen graph was
    slower on an AMD EPYC and about 4% faster in float32 on an Intel Xeon, not worth its compile time
    and second copy of the weights; docs/speed.md), compile elsewhere (CUDA). Puts the net in eval
    mode; gradients are off inside the callable. Move the net to its device and dtype first.
    """
    if not isinstance(net, PEViT):
        raise TypeError(f"zoo.optimize expects a zoo PEViT net, got {type(net).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if mode not in ("auto", "compile", "eager"):
        raise ValueError(f"unknown mode {mode!r}; choose 'auto', 'compile' or 'eager'")
    use_compile = mode == "compile" or (mode == "auto" and net.patch_embed.weight.device.type != "cpu")
    return OptimizedNet(net.eval(), method, use_compile)


__all__ = ["OptimizedNet", "optimize"]
