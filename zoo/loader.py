"""From a name to a ready net: ``load_pretrained_model`` and the ``ModelInfo`` that travels with it.

Every way in resolves to one small ``LoadRecord`` (the entry, the verified files, the input size, the
head and its classes); one builder, ``build``, turns a record into ``(net, ModelInfo)``:

- a registry name: ``registry_record`` (weights folder, converted Hub repo, or Meta's checkpoint converted);
- ``hf-hub:ORG/REPO``: ``hub_record`` (a repo written by ``zoo.push_to_hub`` or ``converters.publish``);
- a fine-tuned file (``./NAME``, ``*.safetensors``, a path with a separator): ``finetuned_record``;
- a checkpoint birder's scripts wrote for a zoo network (``models/NAME_EPOCH.pt``): ``birder_record``;
- CLIP (``zoo.clip.load_pretrained_clip``) and the birder plugin (``zoo.birder``) build through the same builder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import paths, weights
from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.optimize import OptimizedNet
from zoo.optimize import optimize as zoo_optimize
from zoo.registry import Entry, Source, UnknownModelError, Weights, get_entry
from zoo.transforms import classification_transform, pretrained_cfg
from zoo.weights.hub import hub_download

HUB_PREFIX = "hf-hub:"  # load_pretrained_model("hf-hub:ORG/REPO"), as timm and open_clip spell it
HUB_CONFIG_KEYS = ("name", "family", "variant", "architecture", "signature", "rgb_stats", "weights_file")
log = logging.getLogger("zoo")


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded net needs around it: input size, preprocessing statistics, its head and where it came from."""

    name: str
    family: str  # core, spatial or lang
    rgb_stats: dict[str, list[float]]
    class_to_idx: dict[str, int]  # empty for the backbones; a fine-tuned net's classes
    size: tuple[int, int]  # the input size in use (new_size, else the size the weights were made for)
    native_size: tuple[int, int]  # the training resolution
    embedding_size: int
    patch_size: int
    weights: Path  # the verified file the net was loaded from
    num_classes: int = 0  # the classifier head's outputs (0: none, the net outputs its embedding)

    @property
    def outputs(self) -> int:
        """The width of ``net(x)``: the number of classes, else the embedding size."""
        return self.num_classes or self.embedding_size

    @property
    def signature(self) -> dict[str, Any]:
        """birder's shape of the net: inputs ``[0, 3, H, W]`` at the size in use, outputs ``[0, outputs]``."""
        return {"inputs": [{"data_shape": [0, 3, *self.size]}], "outputs": [{"data_shape": [0, self.outputs]}]}

    @property
    def pretrained_cfg(self) -> dict[str, object]:
        """timm's data config of the net (``zoo.transforms.pretrained_cfg``)."""
        return pretrained_cfg(self.size, self.rgb_stats, self.num_classes)

    def transform(self, center_crop: float = 1.0) -> Callable:
        """The net's own preprocessing: PIL image -> normalized tensor [3, H, W] (``zoo.classification_transform``)."""
        return classification_transform(self.size, self.rgb_stats, center_crop)

    def with_classes(self, class_to_idx: dict[str, int], weights: Path) -> "ModelInfo":
        """This info for the same net with a classifier head over ``class_to_idx``, loaded from ``weights``."""
        return dataclasses.replace(self, class_to_idx=dict(class_to_idx), num_classes=len(class_to_idx), weights=Path(weights))


def get_size_from_signature(signature: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) input size a signature declares."""
    shape = signature["inputs"][0]["data_shape"]
    return (int(shape[2]), int(shape[3]))


@dataclass(frozen=True)
class LoadRecord:
    """What every way in resolves to; ``build`` turns it into ``(net, ModelInfo)``."""

    entry: Entry  # the architecture, preprocessing statistics and name
    files: tuple[tuple[Path, str], ...]  # verified safetensors files, each with the prefix its keys take in the net
    size: tuple[int, int]  # the input size
    fix: str  # how to get a right file, for the error when the tensors do not fit
    num_classes: int = 0  # the classifier head the files hold
    class_to_idx: Mapping[str, int] = field(default_factory=dict)
    make: Callable[[], nn.Module] | None = None  # the module to build (default: the entry's PEViT)
    state: Mapping[str, torch.Tensor] | None = None  # tensors already read (a birder checkpoint) instead of the files

    @property
    def weights(self) -> Path:
        return self.files[0][0]


def build(
    record: LoadRecord,
    *,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    drop_path_rate: float = 0.0,
    new_head: int = 0,
) -> tuple[nn.Module, ModelInfo]:
    """The one builder: the record's net built on the meta device, its files memory-mapped in (assigned, strictly),
    an optional new random head of ``new_head`` classes, moved to ``device``/``dtype``, eval mode without
    gradients when ``inference``, timm's ``pretrained_cfg`` set; and its ``ModelInfo``."""
    entry = record.entry
    with torch.device("meta"):  # no random init, no memory: the files' tensors are assigned below
        net = record.make() if record.make is not None else PEViT(entry.config, drop_path_rate=drop_path_rate)
        if record.num_classes:
            net.reset_classifier(record.num_classes)
    expected = net.state_dict().keys()
    state = dict(record.state or {})
    for path, prefix in record.files if record.state is None else ():
        state.update({prefix + k if prefix + k in expected else k: v for k, v in weights.read_tensors(path).items()})
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        files = " and ".join(str(p) for p, _ in record.files)
        raise weights.WeightsIntegrityError(
            f"{files} {'does' if len(record.files) == 1 else 'do'} not hold the tensors of {entry.name} "
            f"({weights.first_line(e)}); {record.fix}"
        ) from None
    if new_head:
        net.reset_classifier(new_head)
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    if inference:
        net.eval().requires_grad_(False)
    info = ModelInfo(
        name=entry.name, family=entry.family, rgb_stats=json.loads(json.dumps(entry.rgb_stats)),
        class_to_idx=dict(record.class_to_idx), size=record.size, native_size=entry.size,
        embedding_size=entry.config.width, patch_size=entry.config.patch_size, weights=record.weights,
        num_classes=new_head or record.num_classes,
    )
    net.pretrained_cfg = info.pretrained_cfg  # timm reads its data config here
    return net, info


def _input_size(entry: Entry, new_size: int | tuple[int, int] | None, default: tuple[int, int] | None = None) -> tuple[int, int]:
    if new_size is None:
        return default or entry.size
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


def check_classes(class_to_idx: Any, where: str, num_classes: int | None = None) -> dict[str, int]:
    """``class_to_idx`` checked: names (strings) to the indices 0..n-1, each once (and n == ``num_classes``)."""
    if not isinstance(class_to_idx, dict) or not all(isinstance(k, str) for k in class_to_idx) or not all(
        type(v) is int for v in class_to_idx.values()
    ):
        raise weights.WeightsIntegrityError(f"{where}: class_to_idx must map class names to integer indices, got {class_to_idx!r:.80}")
    if sorted(class_to_idx.values()) != list(range(len(class_to_idx))):
        raise weights.WeightsIntegrityError(
            f"{where}: class_to_idx must give the classes the indices 0..{len(class_to_idx) - 1}, each once; "
            f"it has duplicate or out-of-range indices"
        )
    if num_classes is not None and class_to_idx and len(class_to_idx) != num_classes:
        raise weights.WeightsIntegrityError(
            f"{where}: num_classes is {num_classes} but class_to_idx names {len(class_to_idx)} classes; publish it again"
        )
    return dict(class_to_idx)


# ------------------------------------------------------------------------------------------------ registry
def registry_record(
    entry: Entry, new_size: int | tuple[int, int] | None = None, weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> LoadRecord:
    """The record of a registry entry: its verified weights file, found or made by ``zoo.weights.resolve``."""
    size = _input_size(entry, new_size)
    path = weights.resolve(entry, weights_dir, progress=progress_bar)
    fix = f"rebuild it: {weights.converter_command(entry, paths.weights_dir(weights_dir))} --force"
    return LoadRecord(entry, ((path, ""),), size, fix)


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
    record = registry_record(entry, new_size, weights_dir, progress_bar)
    return build(record, inference=inference, device=device, dtype=dtype, drop_path_rate=drop_path_rate, new_head=num_classes)


# ------------------------------------------------------------------------------------------------ Hub repos
def _read_hub_config(repo_id: str, progress: bool, revision: str | None) -> dict[str, Any]:
    try:
        path = hub_download(repo_id, "config.json", progress=progress, revision=revision)
    except Exception as e:  # not found, offline, no access: all mean the same to the user
        raise weights.WeightsNotFoundError(
            f"cannot get config.json of the Hub repo {repo_id} ({type(e).__name__}); check the repo id, "
            "your access (HF_TOKEN) and the network (HF_HUB_OFFLINE=1 uses only the local cache)"
        ) from None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise weights.WeightsIntegrityError(f"config.json of {repo_id} is not valid JSON ({e})") from None
    missing = [k for k in HUB_CONFIG_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise weights.WeightsIntegrityError(
            f"{repo_id} is not a pe-zoo repo: its config.json lacks {', '.join(missing)}; publish it with zoo.push_to_hub"
        )
    return config


def _hub_entry(repo_id: str, config: dict[str, Any]) -> Entry:
    """The entry a repo's ``config.json`` describes, every field checked (one-line errors, never a traceback)."""
    def bad(what: str) -> weights.WeightsIntegrityError:
        return weights.WeightsIntegrityError(f"config.json of {repo_id}: {what}; publish the repo again with zoo.push_to_hub")

    for key in ("name", "family", "variant", "weights_file"):
        if not isinstance(config[key], str) or (key in ("name", "weights_file") and not config[key]):
            raise bad(f"{key} must be a {'non-empty ' if key in ('name', 'weights_file') else ''}string, got {config[key]!r:.60}")
    file = config["weights_file"]
    if "/" in file or "\\" in file or file.startswith(".") or not file.endswith(".safetensors"):
        raise bad(f"weights_file must be a plain *.safetensors file name, got {file!r:.60}")
    if not isinstance(config.get("sha256") or {}, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in (config.get("sha256") or {}).items()
    ):
        raise bad(f"sha256 must map file names to hex digests, got {config.get('sha256')!r:.60}")
    stats = config["rgb_stats"]
    if not isinstance(stats, dict) or not all(
        isinstance(stats.get(k), list) and len(stats[k]) == 3 and all(type(v) in (int, float) for v in stats[k]) for k in ("mean", "std")
    ) or not all(v > 0 for v in stats["std"]):
        raise bad(f"rgb_stats must hold mean and std, three numbers each (std > 0), got {stats!r:.80}")
    arch = config["architecture"]
    if not isinstance(arch, dict):
        raise bad("architecture must be an object")
    for key in ("patch_size", "width", "depth", "heads", "mlp_dim", "image_size", "pool_heads"):
        if key in arch and (type(arch[key]) is not int or arch[key] <= 0):
            raise bad(f"architecture {key} must be a positive integer, got {arch[key]!r:.40}")
    try:
        cfg = PEConfig.from_dict(arch)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as e:
        raise bad(f"unreadable architecture ({weights.first_line(e)})") from None
    try:
        base = get_entry(config["name"])
    except UnknownModelError:
        base = None
    file_weights = Weights(file, None, repo_id)
    if base is not None and base.config == cfg:
        known = base.weights.sha256 if base.weights.hub_repo == repo_id and base.weights.file == file else None
        return dataclasses.replace(base, weights=dataclasses.replace(file_weights, sha256=known))
    signature = {"inputs": [{"data_shape": [0, 3, cfg.image_size, cfg.image_size]}], "outputs": [{"data_shape": [0, cfg.width]}]}
    return Entry(
        name=config["name"], family=config["family"], variant=config["variant"], description="", config=cfg,
        signature=signature, rgb_stats=stats, source=Source(str(config.get("base_model") or ""), ""),
        weights=file_weights, license=str(config.get("license", "other")), papers=(),
    )


def _hub_size(repo_id: str, config: dict[str, Any], entry: Entry) -> tuple[int, int]:
    """The input size the repo was published at (its signature), checked."""
    try:
        shape = config["signature"]["inputs"][0]["data_shape"]
        size = (shape[2], shape[3])
    except (KeyError, IndexError, TypeError):
        raise weights.WeightsIntegrityError(
            f"config.json of {repo_id}: signature must be {{inputs: [{{data_shape: [0, 3, H, W]}}], ...}}; publish it again"
        ) from None
    P = entry.config.patch_size
    if not all(type(s) is int and s > 0 and s % P == 0 for s in size):
        raise weights.WeightsIntegrityError(
            f"config.json of {repo_id}: the input size {list(size)} is not two positive multiples of the patch size {P}"
        )
    return size


def hub_record(
    repo_id: str, new_size: int | tuple[int, int] | None = None, revision: str | None = None, progress_bar: bool = True,
) -> LoadRecord:
    """The record of a pe-zoo Hub repo: its ``config.json`` checked, its weights downloaded (cached) and verified
    (``config.json``'s sha256, else the registry's, else the one recorded when first seen; and the file's zoo
    metadata against the architecture). The size is the one the repo was published at, unless ``new_size``."""
    config = _read_hub_config(repo_id, progress_bar, revision)
    entry = _hub_entry(repo_id, config)
    num_classes = config.get("num_classes") or 0
    if type(num_classes) is not int or num_classes < 0:
        raise weights.WeightsIntegrityError(f"config.json of {repo_id}: num_classes must be an integer >= 0, got {num_classes!r:.40}")
    classes = check_classes(config.get("class_to_idx") or {}, f"config.json of {repo_id}", num_classes)
    size = _input_size(entry, new_size, _hub_size(repo_id, config, entry))
    file = entry.weights.file
    fix = f"Download it again: hf download {repo_id} {file} --force-download"
    try:
        path = hub_download(repo_id, file, progress=progress_bar, revision=revision)
    except Exception as e:
        raise weights.WeightsNotFoundError(f"cannot get {file} of the Hub repo {repo_id} ({type(e).__name__}). {fix}") from None
    expected = (config.get("sha256") or {}).get(file) or entry.weights.sha256
    try:
        weights.verify(path, expected, "hf download")
        weights.check_metadata(path, entry, "hf download")
    except weights.WeightsIntegrityError as e:  # the advice of the converted-weights folder does not apply here
        raise weights.WeightsIntegrityError(str(e).split(" Rebuild it")[0] + f" {fix}") from None
    return LoadRecord(entry, ((path, ""),), size, fix, num_classes=num_classes, class_to_idx=classes)


def load_from_hub(
    repo_id: str,
    *,
    revision: str | None = None,
    inference: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    new_size: int | tuple[int, int] | None = None,
    progress_bar: bool = True,
) -> tuple[PEViT, ModelInfo]:
    """The net of a pe-zoo Hub repo and its ``ModelInfo`` (``zoo.load_pretrained_model("hf-hub:ORG/REPO")``)."""
    return build(hub_record(repo_id, new_size, revision, progress_bar), inference=inference, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ fine-tuned files
def _finetuned_fields(path: Path, info: Any) -> tuple[Entry, dict[str, int], tuple[int, int], str]:
    """The base entry, classes, size and kind of a fine-tuned record, each checked."""
    def bad(what: str) -> weights.WeightsIntegrityError:
        return weights.WeightsIntegrityError(f"{path}: its fine-tune record {what}; fine-tune again with `python -m zoo finetune`")

    if not isinstance(info, dict):
        raise bad(f"must be a JSON object, got {type(info).__name__}")
    if not isinstance(info.get("base"), str):
        raise bad(f"must name its base registry model (base), got {info.get('base')!r:.60}")
    entry = get_entry(info["base"])
    classes = check_classes(info.get("class_to_idx"), str(path))
    if not classes:
        raise bad("names no classes (class_to_idx is empty)")
    size = info.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(type(s) is int for s in size):
        raise bad(f"must give the input size as [height, width], got {size!r:.40}")
    if info.get("tensors") not in ("head", "full"):
        raise bad(f"must say which tensors it holds ('head' or 'full'), got {info.get('tensors')!r:.40}")
    if info["tensors"] == "head" and not isinstance(info.get("base_sha256"), str):
        raise bad("must give the sha256 of the base weights its head was trained on (base_sha256)")
    return entry, classes, _input_size(entry, tuple(size)), info["tensors"]


def finetuned_record(
    path: str | os.PathLike, new_size: int | tuple[int, int] | None = None, weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> LoadRecord:
    """The record of a file written by ``zoo.finetune``: verified by its recorded sha256; a head-only file (linear
    probe) gets its backbone from the base checkpoint, resolved and verified as for a registry name."""
    path = Path(path)
    info, _ = weights.read_finetuned(path)
    entry, classes, size, kind = _finetuned_fields(path, info)
    files: tuple[tuple[Path, str], ...] = ((path, ""),)
    if kind == "head":
        base = weights.resolve(entry, weights_dir, progress=progress_bar)
        if weights.verify(base, entry.weights.sha256, weights.converter_command(entry)) != info["base_sha256"]:
            log.warning("%s: the head was trained on other %s weights than %s", path, entry.name, base)
        files = ((path, ""), (base, ""))  # the head from the file, the backbone from the base weights
    fix = "fine-tune again with `python -m zoo finetune`"
    return LoadRecord(entry, files, _input_size(entry, new_size, size), fix, num_classes=len(classes), class_to_idx=classes)


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
    """A net written by ``zoo.finetune`` and its ``ModelInfo`` (``class_to_idx`` filled, size = the training size)."""
    record = finetuned_record(path, new_size, weights_dir, progress_bar)
    return build(record, inference=inference, device=device, dtype=dtype, drop_path_rate=drop_path_rate)


# ------------------------------------------------------------------------------------------------ birder checkpoints
def birder_record(path: str | os.PathLike, new_size: int | tuple[int, int] | None = None) -> LoadRecord:
    """The record of a checkpoint birder's ``train.py`` wrote for a zoo network (``python -m zoo.birder train``):
    its net (no CLIP projection: birder's nets end at the embedding), head, classes, size and RGB statistics."""
    ckpt = weights.read_birder_checkpoint(path)
    entry = dataclasses.replace(ckpt.entry, config=ckpt.config, rgb_stats=ckpt.rgb_stats)
    num_classes = len(ckpt.class_to_idx) if "head.weight" in ckpt.state else 0
    classes = check_classes(ckpt.class_to_idx, str(path), num_classes) if num_classes else {}
    fix = "train it again with `python -m zoo.birder train`"
    return LoadRecord(entry, ((Path(path), ""),), _input_size(entry, new_size, ckpt.size), fix,
                      num_classes=num_classes, class_to_idx=classes, state=ckpt.state)


# ------------------------------------------------------------------------------------------------ every way in
def resolve(
    name: str | os.PathLike,
    *,
    new_size: int | tuple[int, int] | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> LoadRecord:
    """The ``LoadRecord`` of a registry name, ``hf-hub:ORG/REPO`` or a fine-tuned file's path.

    A registry name always means the registry, even when a file of that name is in the current folder:
    a file needs a path form (``./NAME``, ``*.safetensors``, or a path with a separator)."""
    if isinstance(name, str) and name.startswith(HUB_PREFIX):
        return hub_record(name[len(HUB_PREFIX):], new_size, progress_bar=progress_bar)
    if os.fspath(name).endswith(".pt") and weights.is_birder_checkpoint(name):
        return birder_record(name, new_size)
    if weights.is_finetuned_path(name):
        return finetuned_record(name, new_size, weights_dir, progress_bar)
    try:
        entry = get_entry(name)
    except UnknownModelError as e:
        if isinstance(name, str) and os.path.isfile(name):  # a file meant, written as a name
            raise UnknownModelError(f"{e}; to load the file {name!r} in this folder, write it as a path: './{name}'") from None
        raise
    return registry_record(entry, new_size, weights_dir, progress_bar)


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
    ``name`` a path to a file written by ``python -m zoo finetune`` (``./NAME``, ``*.safetensors``, or with a
    separator): that net, with its classes in ``ModelInfo.class_to_idx``. ``info.transform()`` is its preprocessing.
    """
    record = resolve(name, new_size=new_size, weights_dir=weights_dir, progress_bar=progress_bar)
    if num_classes and record.num_classes:
        raise ValueError(f"{name} is a net with its own head ({record.num_classes} classes); load it without num_classes, then call net.reset_classifier({num_classes})")
    net, info = build(
        record, inference=inference, device=device, dtype=dtype, drop_path_rate=drop_path_rate, new_head=num_classes,
    )
    if not optimize:
        return net, info
    fast = zoo_optimize(net)
    fast.pretrained_cfg = net.pretrained_cfg  # type: ignore[attr-defined]
    return fast, info


__all__ = [
    "HUB_CONFIG_KEYS", "HUB_PREFIX", "LoadRecord", "ModelInfo", "build", "check_classes", "finetuned_record",
    "get_size_from_signature", "hub_record", "load_entry", "load_finetuned", "load_from_hub", "load_pretrained_model",
    "registry_record", "resolve",
]
