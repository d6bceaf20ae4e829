"""From a registry name to a ready net: ``load_pretrained_model`` and the ``ModelInfo`` that travels with it."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo import paths, weights
from zoo.integrations.birder_files import is_birder_checkpoint, read_birder_checkpoint
from zoo.nets.pe_vit import PEViT
from zoo.optimize import OptimizedNet
from zoo.optimize import optimize as zoo_optimize
from zoo.registry import Entry, get_entry
from zoo.transforms import pretrained_cfg

HUB_PREFIX = "hf-hub:"  # load_pretrained_model("hf-hub:ORG/REPO"), as timm and open_clip spell it


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded net needs around it: input size, preprocessing statistics and where it came from."""

    name: str
    family: str  # core, spatial or lang
    signature: dict[str, Any]  # birder's shape: inputs [0, 3, H, W] at the size in use, outputs [0, W]
    rgb_stats: dict[str, list[float]]
    class_to_idx: dict[str, int]  # empty for the backbones; a fine-tuned net's classes
    size: tuple[int, int]  # the input size in use (new_size, else the native size)
    native_size: tuple[int, int]  # the training resolution
    embedding_size: int
    patch_size: int
    weights: Path  # the verified file the net was loaded from

    def with_classes(self, class_to_idx: dict[str, int], weights: Path) -> "ModelInfo":
        """This info for the same net with a classifier head over ``class_to_idx``, loaded from ``weights``."""
        signature = copy.deepcopy(self.signature)
        signature["outputs"][0]["data_shape"] = [0, len(class_to_idx)]
        return dataclasses.replace(self, signature=signature, class_to_idx=dict(class_to_idx), weights=Path(weights))


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
    fix = f"rebuild it: {weights.converter_command(entry, paths.weights_dir(weights_dir))} --force"
    net, info = build_from_file(
        entry, path, size, fix=fix, inference=inference, device=device, dtype=dtype, drop_path_rate=drop_path_rate
    )
    if not num_classes:
        return net, info
    net.reset_classifier(num_classes)
    if inference:
        net.head.requires_grad_(False)
    net.pretrained_cfg = pretrained_cfg(size, entry.rgb_stats, net.num_classes)
    signature = copy.deepcopy(info.signature)
    signature["outputs"][0]["data_shape"] = [0, num_classes]
    return net, dataclasses.replace(info, signature=signature)


def build_from_file(
    entry: Entry,
    path: Path,
    size: tuple[int, int],
    *,
    fix: str,
    num_classes: int = 0,
    class_to_idx: dict[str, int] | None = None,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    drop_path_rate: float = 0.0,
) -> tuple[PEViT, ModelInfo]:
    """The net of ``entry`` (with the ``num_classes`` head the file holds) from the verified file ``path``.

    Built on the meta device, the file memory-mapped in; ``fix`` says how to get a right file."""
    with torch.device("meta"):  # no random init, no memory: the file's tensors are assigned below
        net = PEViT(entry.config, drop_path_rate=drop_path_rate)
        if num_classes:
            net.reset_classifier(num_classes)
    try:
        net.load_state_dict(weights.read_tensors(path), strict=True, assign=True)
    except RuntimeError as e:
        raise weights.WeightsIntegrityError(
            f"{path} does not hold the tensors of {entry.name} ({weights.first_line(e)}); {fix}"
        ) from None
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    if inference:
        net.eval().requires_grad_(False)
    net.pretrained_cfg = pretrained_cfg(size, entry.rgb_stats, net.num_classes)  # timm reads its data config here
    return net, _model_info(entry, size, path, class_to_idx)


def _model_info(entry: Entry, size: tuple[int, int], path: Path, class_to_idx: dict[str, int] | None = None) -> ModelInfo:
    signature = copy.deepcopy(entry.signature)
    signature["inputs"][0]["data_shape"] = [0, 3, size[0], size[1]]
    if class_to_idx:
        signature["outputs"][0]["data_shape"] = [0, len(class_to_idx)]
    return ModelInfo(
        name=entry.name,
        family=entry.family,
        signature=signature,
        rgb_stats=copy.deepcopy(entry.rgb_stats),
        class_to_idx=dict(class_to_idx or {}),
        size=size,
        native_size=entry.size,
        embedding_size=entry.config.width,
        patch_size=entry.config.patch_size,
        weights=path,
    )


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
    """A pretrained net and its ``ModelInfo`` from a registry name, a Hub repo or a fine-tuned file.

    Weights come from the weights folder, the converted Hub repo, or Meta's checkpoint converted on
    the spot (cached), always verified. The net is built on the meta device and the safetensors are
    memory-mapped in. ``inference=True``: eval mode without gradients. ``new_size``: another input
    size (int or (h, w)), reflected in the returned signature. ``dtype``/``device``: converted after loading.
    ``optimize=True``: the net comes wrapped by ``zoo.optimize`` (the fastest ``net(x)`` for its device
    and dtype, in eval mode without gradients; the net itself is at ``.net``).
    ``num_classes``: a new, randomly initialised linear head over the embedding (for fine-tuning).
    ``drop_path_rate``: stochastic depth in training mode (see ``PEViT``).
    ``name="hf-hub:ORG/REPO"``: a repo written by ``zoo.push_to_hub`` or ``python -m converters.publish``
    (its ``config.json`` and weights, verified by sha256 and metadata); ``weights_dir`` does not apply.
    ``name`` a path to a file written by ``python -m zoo finetune``: that net, with its classes in
    ``ModelInfo.class_to_idx``.
    """
    if isinstance(name, str) and name.startswith(HUB_PREFIX):
        from zoo.hub import load_from_hub

        if num_classes or drop_path_rate:
            raise ValueError("num_classes and drop_path_rate apply to registry names; load the Hub repo, then call net.reset_classifier(n)")
        net, info = load_from_hub(
            name[len(HUB_PREFIX):], inference=inference, device=device, dtype=dtype, new_size=new_size,
            progress_bar=progress_bar,
        )
    elif isinstance(name, (str, os.PathLike)) and os.fspath(name).endswith(".pt") and is_birder_checkpoint(name):
        net, info = load_birder_checkpoint(name, inference=inference, device=device, dtype=dtype, new_size=new_size)
    elif weights.is_finetuned_path(name):
        if num_classes:
            raise ValueError(f"{name} is a fine-tuned net with its own head; load it without num_classes, then call net.reset_classifier({num_classes})")
        net, info = load_finetuned(
            name, inference=inference, device=device, dtype=dtype, new_size=new_size,
            weights_dir=weights_dir, progress_bar=progress_bar, drop_path_rate=drop_path_rate,
        )
    else:
        net, info = load_entry(
            get_entry(name), inference=inference, device=device, dtype=dtype, new_size=new_size,
            weights_dir=weights_dir, progress_bar=progress_bar, num_classes=num_classes, drop_path_rate=drop_path_rate,
        )
    if not optimize:
        return net, info
    fast = zoo_optimize(net)
    fast.pretrained_cfg = net.pretrained_cfg  # type: ignore[attr-defined]
    return fast, info


def load_birder_checkpoint(
    path: str | os.PathLike,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    new_size: int | tuple[int, int] | None = None,
) -> tuple[PEViT, ModelInfo]:
    """A net trained by birder on a zoo network (``python -m zoo.birder train``), with its classes and statistics."""
    ckpt = read_birder_checkpoint(path)
    with torch.device("meta"):
        net = PEViT(ckpt.config)
    if "head.weight" in ckpt.state:
        net.reset_classifier(len(ckpt.class_to_idx))
    try:
        net.load_state_dict(ckpt.state, strict=True, assign=True)
    except RuntimeError as e:
        raise weights.WeightsIntegrityError(f"{path} does not hold the tensors of a {ckpt.entry.name} network ({e})") from None
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    if inference:
        net.eval().requires_grad_(False)
    size = _input_size(ckpt.entry, new_size if new_size is not None else ckpt.size)
    net.pretrained_cfg = pretrained_cfg(size, ckpt.rgb_stats, net.num_classes)
    info = _model_info(ckpt.entry, size, Path(path), ckpt.class_to_idx)
    return net, dataclasses.replace(info, rgb_stats=ckpt.rgb_stats)


def load_finetuned(
    path: str | os.PathLike,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    new_size: int | tuple[int, int] | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
    drop_path_rate: float = 0.0,
) -> tuple[PEViT, ModelInfo]:
    """A net written by ``zoo.finetune`` and its ``ModelInfo`` (``class_to_idx`` filled, size = the training size).

    The file is verified by its recorded sha256; a head-only file (linear probe) gets its backbone from the
    base checkpoint, resolved and verified as ``load_pretrained_model`` does.
    """
    from zoo.models import create_model

    record, tensors = weights.read_finetuned(path)
    entry = get_entry(record["base"])
    classes = record["class_to_idx"]
    state = dict(tensors)
    if record["tensors"] == "head":
        base = weights.resolve(entry, weights_dir, progress=progress_bar)
        if weights.verify(base, entry.weights.sha256, weights.converter_command(entry)) != record["base_sha256"]:
            logging.getLogger("zoo").warning("%s: the head was trained on other %s weights than %s", path, entry.name, base)
        state = {**weights.read_tensors(base), **state}
    net = create_model(entry.name, num_classes=len(classes), drop_path_rate=drop_path_rate, device="meta")
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise weights.WeightsIntegrityError(f"{path} does not hold the tensors of a fine-tuned {entry.name} ({e})") from None
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    if inference:
        net.eval().requires_grad_(False)
    size = _input_size(entry, new_size if new_size is not None else tuple(record["size"]))
    net.pretrained_cfg = pretrained_cfg(size, entry.rgb_stats, net.num_classes)
    return net, _model_info(entry, size, Path(path), classes)


__all__ = [
    "HUB_PREFIX", "ModelInfo", "build_from_file", "get_size_from_signature", "load_entry", "load_finetuned",
    "load_pretrained_model",
]
