"""From a registry name to a ready net: ``load_pretrained_model`` and the ``ModelInfo`` that travels with it."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo import paths, weights
from zoo.nets.pe_vit import PEViT
from zoo.optimize import OptimizedNet
from zoo.optimize import optimize as zoo_optimize
from zoo.registry import Entry, get_entry


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded net needs around it: input size, preprocessing statistics and where it came from."""

    name: str
    family: str  # core, spatial or lang
    signature: dict[str, Any]  # birder's shape: inputs [0, 3, H, W] at the size in use, outputs [0, W]
    rgb_stats: dict[str, list[float]]
    class_to_idx: dict[str, int]  # empty: these backbones have no classifier
    size: tuple[int, int]  # the input size in use (new_size, else the native size)
    native_size: tuple[int, int]  # the training resolution
    embedding_size: int
    patch_size: int
    weights: Path  # the verified file the net was loaded from


def get_size_from_signature(signature: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) input size a signature declares."""
    shape = signature["inputs"][0]["data_shape"]
    return (int(shape[2]), int(shape[3]))


def _input_size(entry: Entry, new_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if new_size is None:
        return entry.size
    P = entry.config.patch_size
    sides = [new_size, new_size] if hasattr(new_size, "__index__") else new_size
    if isinstance(new_size, (bool, str, bytes)) or not hasattr(sides, "__len__") or len(sides) != 2 or not all(
        hasattr(s, "__index__") and not isinstance(s, bool) for s in sides
    ):
        raise TypeError(f"new_size must be an integer or a (height, width) pair of integers, got {type(new_size).__name__} {new_size!r}")
    size = (sides[0].__index__(), sides[1].__index__())
    if not all(s > 0 and s % P == 0 for s in size):
        raise ValueError(f"new_size {new_size!r} must be an int or (height, width) of positive multiples of the patch size {P}")
    return size


def load_entry(
    entry: Entry,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    new_size: int | tuple[int, int] | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
    num_classes: int = 0,
    drop_path_rate: float = 0.0,
) -> tuple[PEViT, ModelInfo]:
    """``load_pretrained_model`` for a registry ``Entry`` (see there)."""
    size = _input_size(entry, new_size)
    path = weights.resolve(entry, weights_dir, progress=progress_bar)
    with torch.device("meta"):  # no random init, no memory: the file's tensors are assigned below
        net = PEViT(entry.config, drop_path_rate=drop_path_rate)
    try:
        net.load_state_dict(weights.read_tensors(path), strict=True, assign=True)
    except RuntimeError as e:
        raise weights.WeightsIntegrityError(
            f"{path} does not hold the tensors of {entry.name} ({e}); rebuild it: "
            f"{weights.converter_command(entry, paths.weights_dir(weights_dir))} --force"
        ) from None
    if num_classes:
        net.reset_classifier(num_classes)
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    if inference:
        net.eval().requires_grad_(False)
    signature = copy.deepcopy(entry.signature)
    signature["inputs"][0]["data_shape"] = [0, 3, size[0], size[1]]
    info = ModelInfo(
        name=entry.name,
        family=entry.family,
        signature=signature,
        rgb_stats=copy.deepcopy(entry.rgb_stats),
        class_to_idx={},
        size=size,
        native_size=entry.size,
        embedding_size=entry.config.width,
        patch_size=entry.config.patch_size,
        weights=path,
    )
    return net, info


def load_pretrained_model(
    name: str,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    new_size: int | tuple[int, int] | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
    optimize: bool = False,
    num_classes: int = 0,
    drop_path_rate: float = 0.0,
) -> tuple[PEViT | OptimizedNet, ModelInfo]:
    """A pretrained net and its ``ModelInfo`` from a registry name.

    Weights come from the weights folder, the converted Hub repo, or Meta's checkpoint converted on
    the spot (cached), always verified. The net is built on the meta device and the safetensors are
    memory-mapped in. ``inference=True``: eval mode without gradients. ``new_size``: another input
    size (int or (h, w)), reflected in the returned signature. ``dtype``/``device``: converted after loading.
    ``optimize=True``: the net comes wrapped by ``zoo.optimize`` (the fastest ``net(x)`` for its device
    and dtype, in eval mode without gradients; the net itself is at ``.net``).
    ``num_classes``: a new, randomly initialised linear head over the embedding (for fine-tuning).
    ``drop_path_rate``: stochastic depth in training mode (see ``PEViT``).
    """
    net, info = load_entry(
        get_entry(name), inference=inference, device=device, dtype=dtype,
        new_size=new_size, weights_dir=weights_dir, progress_bar=progress_bar,
        num_classes=num_classes, drop_path_rate=drop_path_rate,
    )
    return (zoo_optimize(net) if optimize else net), info
