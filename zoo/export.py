"""Export a net for deployment: ONNX (``to_onnx``) and ``torch.export`` programs (``to_pt2``).

Both trace one method of the net (``embedding``, ``clip_embedding``, ``forward_features``,
``detection_features`` or ``forward``; a ``PEText`` text tower exports its ``forward``), with the
batch dimension dynamic and, with ``dynamic="batch,size"``, height and width too (any multiple of
the patch size: the position-embedding resampling and the RoPE tables are computed inside the
graph). The graph holds standard operators only (plain matmuls, never the eager net's oneDNN-packed
weights). Before reporting success each export runs its artifact (ONNX Runtime for ``.onnx``,
``torch.export.load`` for ``.pt2``) against the eager net on random inputs; beyond the tolerance the
file is deleted and ``ExportError`` raised. Files appear atomically (written into a temporary folder
``.<file>.<pid>.<random>.tmp`` beside the destination, then moved into place); an existing file is
replaced only with ``force=True``, and staging folders that killed exports left are removed by the next
export to the same file.

ONNX needs the optional extra ``pip install 'pe-zoo[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from zoo.fileio import pid_alive
from zoo.nets.pe_vit import PEViT, set_packing
from zoo.nets.text import PEText

log = logging.getLogger("zoo")

METHODS = ("embedding", "clip_embedding", "forward_features", "detection_features", "forward")
DYNAMIC = ("batch", "batch,size")
ONNX_EXTRA = "pip install 'pe-zoo[onnx]'  (onnx, onnxruntime, onnxscript)"
ONNX_PROTOBUF_LIMIT = 2 * 1024**3  # weights beyond this go to external data beside the .onnx file
TRACE_BATCH, CHECK_BATCH = 2, 3  # traced at one batch size, checked at another


class ExportError(RuntimeError):
    """An export that could not be made or did not match the eager net."""


class MissingExtraError(ExportError, ImportError):
    """The optional ``[onnx]`` extra is not installed."""


def default_method(net: nn.Module) -> str:
    """``forward`` for a net with a classifier head (and for a text tower), else ``embedding``."""
    return "forward" if isinstance(net, PEText) or getattr(net, "num_classes", 0) else "embedding"


def tolerance(dtype: torch.dtype) -> float:
    """Largest allowed ``max|exported - eager| / max(1, max|eager|)``: 1e-4 in float32, 5e-2 in half types."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2


# ------------------------------------------------------------------ the traced module
class _Method(nn.Module):
    """One method of the net as ``forward``, returning a tuple of tensors (named by ``output_names``)."""

    def __init__(self, net: nn.Module, method: str, layers: list[int] | None) -> None:
        super().__init__()
        self.net, self.method, self.layers = net, method, layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.method == "detection_features":
            return tuple(self.net.detection_features(x, layers=self.layers).values())
        return (getattr(self.net, self.method)(x),)


class _Spec:
    """What one export traces: the wrapped method, its example input, names and dynamic shapes."""

    def __init__(
        self, net: nn.Module, method: str | None, size: int | tuple[int, int] | None, dynamic: str, layers: list[int] | None
    ) -> None:
        if dynamic not in DYNAMIC:
            raise ValueError(f"dynamic must be one of {', '.join(map(repr, DYNAMIC))}, got {dynamic!r}")
        method = method or default_method(net)
        p = next(net.parameters())
        self.net, self.method, self.dynamic, self.dtype = net, method, dynamic, p.dtype
        batch = torch.export.Dim("batch", min=1)
        if isinstance(net, PEText):
            if method != "forward" or size is not None or dynamic != "batch" or layers is not None:
                raise ValueError("a text tower exports its forward (token ids [batch, context] -> text features) "
                                 "with a dynamic batch only: drop method/size/layers and use dynamic='batch'")
            self.input_name, self.output_names = "tokens", ["text_features"]
            self.shape = (net.context_length,)
            self.dynamic_shapes = {"x": {0: batch}}
        elif isinstance(net, PEViT):
            self._check_vision(net, method, layers)
            P = net.patch_size
            h, w = (size, size) if isinstance(size, int) else (size or (net.cfg.image_size,) * 2)
            if h <= 0 or w <= 0 or h % P or w % P:
                raise ValueError(f"size {h}x{w} must be positive multiples of the patch size {P}")
            self.input_name, self.shape = "image", (3, h, w)
            self.output_names = self._vision_outputs(net, method, layers)
            dims = {0: batch}
            if dynamic == "batch,size":
                dims.update({2: P * torch.export.Dim("grid_h", min=1), 3: P * torch.export.Dim("grid_w", min=1)})
            self.dynamic_shapes = {"x": dims}
        else:
            raise TypeError(f"export takes a zoo PEViT or PEText net, got {type(net).__name__}")
        self.layers = layers

    @staticmethod
    def _check_vision(net: PEViT, method: str, layers: list[int] | None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method == "clip_embedding" and net.clip_proj is None:
            raise ValueError("clip_embedding needs a CLIP projection (PE-Core models only); use method 'embedding'")
        if layers is not None and method != "detection_features":
            raise ValueError("layers only apply to method 'detection_features'")

    @staticmethod
    def _vision_outputs(net: PEViT, method: str, layers: list[int] | None) -> list[str]:
        if method == "detection_features":
            p = net.patch_embed.weight  # the output names, with layers validated by the net itself (one-patch input)
            with torch.no_grad():
                return list(net.detection_features(p.new_zeros(1, 3, net.patch_size, net.patch_size), layers=layers))
        if method == "forward":
            return ["logits" if net.num_classes else "embedding"]
        return {"forward_features": ["features"]}.get(method, [method])

    def example(self, batch: int, shape: tuple[int, ...] | None = None, seed: int = 0) -> torch.Tensor:
        """A random input: images in the net's dtype, or distinct token ids (no ties at the end-of-text argmax)."""
        gen = torch.Generator().manual_seed(seed)
        shape = shape or self.shape
        if isinstance(self.net, PEText):
            vocab = self.net.token_embed.num_embeddings
            return torch.stack([torch.randperm(vocab, generator=gen)[: shape[0]] for _ in range(batch)])
        return torch.randn(batch, *shape, generator=gen).to(self.dtype)

    def check_inputs(self) -> list[torch.Tensor]:
        """Inputs for the self-check: another batch size than traced, and a non-square size when sizes are dynamic."""
        inputs = [self.example(CHECK_BATCH, seed=1)]
        if self.dynamic == "batch,size":
            P = self.net.patch_size
            _, h, w = self.shape
            inputs.append(self.example(1, (3, h + P, w + 2 * P), seed=2))
        return inputs

    def traced(self) -> nn.Module:
        """What the exporter traces: the method on a twin of the net (see ``_twin``)."""
        return _Method(_twin(self.net), self.method, self.layers)

    def eager(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The net's own outputs, as users run it."""
        with torch.no_grad():
            return list(_Method(self.net, self.method, self.layers)(x))


def _twin(net: nn.Module) -> nn.Module:
    """A copy of the net for the exporter to trace: its own ``Parameter`` objects over the same storage
    (no second copy of the weights), plain (never oneDNN-packed), in eval mode.

    Tracing leaves torch's weak references on the parameters it sees; on the twin, they cannot stop the
    user's net from packing its weights again, and the user's net keeps its mode and packing settings.
    """
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in net.parameters()}  # detach: unpacked
    twin = copy.deepcopy(net, memo)
    set_packing(twin, False)
    return twin.eval()


# -------------------------------------------------------------- writing, checking
def _refuse_existing(path: Path, force: bool) -> None:
    if not force and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} already exists; pass --force (force=True) to replace it, or choose another --out")


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging folders (``.<name>.<pid>.<random>.tmp``) that killed exports of ``path`` left; never a
    running export's (its process alive). Returns those removed."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if tmp.is_dir() and not tmp.is_symlink() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.info("removed %s, left by an interrupted export (process %s)", tmp, pid)
    return removed


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` (same file system: the final moves are atomic), always removed;
    stale ones of earlier killed exports of ``path`` are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compare(spec: _Spec, run: Callable[[torch.Tensor], list[torch.Tensor]], what: str) -> float:
    """Worst scaled difference between the artifact and the eager net over the check inputs; raises beyond tolerance."""
    worst = 0.0
    limit = tolerance(spec.dtype)
    for x in spec.check_inputs():
        expected = spec.eager(x)
        got = run(x)
        for name, e, g in zip(spec.output_names, expected, got):
            if tuple(g.shape) != tuple(e.shape):
                raise ExportError(f"{what} output {name!r} has shape {tuple(g.shape)}, the eager net {tuple(e.shape)}")
            e, g = e.double(), g.double()
            err = ((g - e).abs().max() / e.abs().max().clamp(min=1)).item()
            worst = max(worst, err)
            if not err <= limit:
                raise ExportError(
                    f"{what} differs from the eager net on input {tuple(x.shape)} (output {name!r}: scaled max "
                    f"difference {err:.2e} > {limit:.0e}); nothing was written"
                )
    return worst


def _move_into_place(files: list[Path], dest_dir: Path, force: bool) -> None:
    for f in files:
        _refuse_existing(dest_dir / f.name, force)  # written meanwhile by someone else
    for f in files:  # the main file last: once it exists, everything it refers to does
        os.replace(f, dest_dir / f.name)


@contextlib.contextmanager
def _tracing(exporter: str) -> Iterator[None]:
    """Around an exporter: its chatter silenced (progress lines on stdout, tracer warnings), its
    failures one ``ExportError`` line."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except Exception as e:  # the exporter's own errors, e.g. an opset it cannot target
        raise ExportError(f"{exporter} failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e


# ------------------------------------------------------------------------- ONNX
def require_onnx():
    """The ``onnxruntime`` module; ``MissingExtraError`` naming the extra when the ``[onnx]`` extra is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise MissingExtraError(f"ONNX export needs the optional extra ({e.name} is missing): {ONNX_EXTRA}") from None
    return onnxruntime


def _check_opset(path: Path, opset: int | None) -> None:
    """Refuse a file whose ONNX opset is not the one asked (torch falls back to its own when it cannot convert)."""
    if opset is None:
        return
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    wrote = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if wrote != opset:
        raise ExportError(f"torch's ONNX exporter cannot write opset {opset} for this net (it wrote opset {wrote}); "
                          f"pass --opset {wrote} or higher, or leave --opset out; nothing was written")


def _ort_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations on."""
    ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only (not its notes on kernels it falls back from)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def to_onnx(
    net: PEViT | PEText,
    path: str | os.PathLike,
    *,
    method: str | None = None,
    size: int | tuple[int, int] | None = None,
    dynamic: str = "batch",
    opset: int | None = None,
    layers: list[int] | None = None,
    external_data: bool | None = None,
    force: bool = False,
) -> Path:
    """Export ``getattr(net, method)`` to an ONNX file, checked with ONNX Runtime against the eager net.

    ``method``: default ``embedding`` (``forward`` for a net with a classifier head or a text tower).
    ``size``: the traced input size (int or (h, w); default the native size). ``dynamic``: ``"batch"`` or
    ``"batch,size"`` (height and width any multiple of the patch size). ``opset``: the ONNX opset (default:
    torch's). ``layers``: block indices for ``detection_features`` (outputs ``block{i}``; default ``neck``).
    ``external_data``: weights in ``<file>.data`` beside the model (default: when they exceed ONNX's 2 GB limit).
    The input is named ``image`` (``tokens`` for a text tower), the outputs after the method. An existing file
    is replaced only with ``force=True`` (else ``FileExistsError``); an ``opset`` torch's exporter cannot write
    raises ``ExportError`` naming the one it can. Returns the path.
    """
    require_onnx()
    path = Path(path)
    _refuse_existing(path, force)
    spec = _Spec(net, method, size, dynamic, layers)
    if spec.dtype == torch.bfloat16:
        raise ValueError("ONNX has no bfloat16 convolution (ONNX Runtime cannot load it): export float32 or float16, "
                         "or bfloat16 with to_pt2 / --format pt2")
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    if external_data is None:
        external_data = weight_bytes > ONNX_PROTOBUF_LIMIT
    with _staging(path) as tmp:
        staged = tmp / path.name
        log.info("exporting %s.%s to ONNX (dynamic %s)", type(net).__name__, spec.method, dynamic)
        with _tracing("torch.onnx.export"):
            program = torch.onnx.export(
                spec.traced(), (spec.example(TRACE_BATCH),), dynamo=True, dynamic_shapes=spec.dynamic_shapes,
                input_names=[spec.input_name], output_names=spec.output_names, opset_version=opset, verbose=False,
            )
            program.save(staged, external_data=external_data)
            del program
        _check_opset(staged, opset)
        files = sorted(tmp.iterdir(), key=lambda f: f == staged)
        if external_data:
            log.info("weights (%.2f GB) written as external data beside the model: %s", weight_bytes / 1e9,
                     ", ".join(f.name for f in files if f != staged))
        session = _ort_session(staged)
        err = _compare(spec, lambda x: [torch.from_numpy(o) for o in session.run(None, {spec.input_name: x.numpy()})],
                       "the ONNX Runtime result")
        del session
        _move_into_place(files, path.parent, force)
    log.info("wrote %s (checked with ONNX Runtime: scaled max difference %.1e)", path, err)
    return path


# ------------------------------------------------------------------ torch.export
def to_pt2(
    net: PEViT | PEText,
    path: str | os.PathLike,
    *,
    method: str | None = None,
    size: int | tuple[int, int] | None = None,
    dynamic: str = "batch",
    layers: list[int] | None = None,
    force: bool = False,
) -> Path:
    """Export ``getattr(net, method)`` as a ``torch.export`` program (``.pt2``), checked after
    ``torch.export.load`` against the eager net. Options as ``to_onnx``; run it with
    ``torch.export.load(path).module()(x)``, which returns a tuple (one tensor per output). Returns the path."""
    path = Path(path)
    _refuse_existing(path, force)
    spec = _Spec(net, method, size, dynamic, layers)
    with _staging(path) as tmp:
        staged = tmp / path.name
        log.info("exporting %s.%s with torch.export (dynamic %s)", type(net).__name__, spec.method, dynamic)
        with _tracing("torch.export"):
            program = torch.export.export(spec.traced(), (spec.example(TRACE_BATCH),), dynamic_shapes=spec.dynamic_shapes)
            torch.export.save(program, staged)
            del program
        loaded = torch.export.load(staged).module()
        with torch.no_grad():
            err = _compare(spec, lambda x: list(loaded(x)), "the torch.export program")
        _move_into_place([staged], path.parent, force)
    log.info("wrote %s (checked after torch.export.load: scaled max difference %.1e)", path, err)
    return path


__all__ = [
    "DYNAMIC", "METHODS", "ExportError", "MissingExtraError", "default_method", "require_onnx", "to_onnx", "to_pt2", "tolerance",
]
