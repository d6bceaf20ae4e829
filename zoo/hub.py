"""Publish zoo nets to Hugging Face Hub repos (``push_to_hub``); ``zoo.loader`` loads them back (``load_from_hub``,
re-exported here). Publishing depends on loading, never the other way round.

A repo holds ``<name>.safetensors`` (zoo metadata inside), ``config.json`` (architecture, preprocessing,
timm's ``pretrained_cfg``, classes, the sha256 of each weights file) and a ``README.md`` card. The
converters (``python -m converters.publish``) stage registry checkpoints in the same layout.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from zoo.loader import ModelInfo, load_from_hub
from zoo.nets.pe_vit import PEViT
from zoo.registry import Entry, Source, UnknownModelError, Weights, get_entry
from zoo.transforms import pretrained_cfg
from zoo.version import __version__
from zoo.weights import (
    ConversionError, TensorSpec, converter_command, file_sha256, read_metadata, write_safetensors,
)
from zoo.weights.convert_text import text_weights_file


class PublishError(Exception):
    """Publishing cannot go on; the message says why and what to do."""


def preprocessing(entry: Entry, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The inference preprocessing of an entry, as data (what ``zoo.classification_transform`` does)."""
    return {
        "resize": list(size or entry.size),
        "resize_mode": "squash",  # the whole image, aspect ratio not kept
        "interpolation": "bilinear",
        "color_mode": "RGB",
        "rescale_factor": 1 / 255,
        "mean": entry.rgb_stats["mean"],
        "std": entry.rgb_stats["std"],
    }


def hub_config(
    entry: Entry, sha256: dict[str, str] | None = None, *, size: tuple[int, int] | None = None,
    class_to_idx: dict[str, int] | None = None, num_classes: int = 0,
) -> dict[str, Any]:
    """The ``config.json`` published beside the weights (``sha256``: file name -> hash of each weights file)."""
    size = size or entry.size
    signature = json.loads(json.dumps(entry.signature))
    signature["inputs"][0]["data_shape"] = [0, 3, *size]
    if num_classes:
        signature["outputs"][0]["data_shape"] = [0, num_classes]
    return {
        "format": "pe-zoo",
        "name": entry.name,
        "family": entry.family,
        "variant": entry.variant,
        "architecture": entry.config.to_dict(),
        "num_classes": num_classes,
        "class_to_idx": dict(class_to_idx or {}),
        "signature": signature,
        "rgb_stats": entry.rgb_stats,
        "preprocessing": preprocessing(entry, size),
        "pretrained_cfg": pretrained_cfg(size, entry.rgb_stats, num_classes),
        "weights_file": entry.weights.file,
        "sha256": dict(sha256 or {}),
        "base_model": entry.source.repo,
        "license": entry.license,
        "zoo_version": __version__,
    }


def stage(files: list[Path], folder: Path, config: dict[str, Any], card: str) -> list[tuple[str, int, str]]:
    """Create ``folder`` (new or empty) with ``files``, ``config.json`` and the card as ``README.md``.

    It is filled beside its final place and moved there at the end, so a failure leaves nothing behind.
    The files are hard-linked when possible. Returns ``(file name, size, sha256)`` of each staged file.
    """
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PublishError(f"staging folder {folder} is not empty; pick a new or empty folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for path in files:
            try:
                os.link(path, tmp / path.name)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(path, tmp / path.name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(card, encoding="utf-8")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    known = config.get("sha256") or {}  # weights hashed already, for config.json: not read twice
    return [(p.name, p.stat().st_size, known.get(p.name) or file_sha256(p)) for p in sorted(folder.iterdir())]


def hub_token(token: str | None = None) -> str:
    """``token``, else the Hugging Face token from ``HF_TOKEN`` or the huggingface_hub login."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    return token


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"the repo id must look like ORG/REPO, got {repo_id!r}")


def upload(folder: Path, repo_id: str, *, private: bool, token: str, message: str) -> str:
    """Create the Hub repo if needed and upload the staged folder in one commit; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="pe-zoo", library_version=__version__)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
        return str(url)
    except Exception as e:  # HTTP, connection, offline-mode and validation errors all end here
        first = (str(e).strip().splitlines() or [""])[0].replace(token, "***")
        raise PublishError(f"the Hugging Face Hub refused or failed the upload to {repo_id}: {type(e).__name__}: {first}") from None


def _net_entry(net: PEViT, info: ModelInfo) -> Entry:
    """The entry a net is published as: its registry entry when it has one, else one made from ``info``."""
    try:
        base = get_entry(info.name)
    except UnknownModelError:
        base = None
    if base is not None and base.config == net.cfg:
        return base
    return Entry(
        name=info.name, family=info.family, variant=base.variant if base else "", description="",
        config=net.cfg, signature=info.signature, rgb_stats=info.rgb_stats,
        source=base.source if base else Source("", ""), weights=Weights(f"{info.name}.safetensors", None, None),
        license=base.license if base else "other", papers=base.papers if base else (),
    )


def repo_card(repo_id: str, config: dict[str, Any]) -> str:
    """The card of a net published by ``push_to_hub``: front matter, what it is, how to load it."""
    data = ModelCardData(
        library_name="pe-zoo", license=config["license"], base_model=config["base_model"] or None,
        pipeline_tag="image-classification" if config["num_classes"] else "image-feature-extraction",
        tags=["pytorch", "perception-encoder", "vision-transformer"],
    )
    arch, n = config["architecture"], config["num_classes"]
    head = f"a {n}-class linear head on the embedding" if n else "no classifier head (the embedding is the output)"
    h, w = config["signature"]["inputs"][0]["data_shape"][2:]
    return "\n\n".join([
        f"---\n{data.to_yaml()}\n---",
        f"# {repo_id}",
        f"A pe-zoo net built on `{config['name']}` (Meta's Perception Encoder, "
        f"{config['family']} {config['variant']}), published with `zoo.push_to_hub`.",
        "## Model details",
        f"- **Architecture:** ViT, width {arch['width']}, {arch['depth']} blocks, {arch['heads']} heads, "
        f"patch {arch['patch_size']}; {head}\n"
        f"- **Input size:** {h} x {w} px; resize the whole image (bilinear), RGB scaled to [0, 1], normalized with "
        f"mean {config['rgb_stats']['mean']} and std {config['rgb_stats']['std']}\n"
        f"- **Weights:** `{config['weights_file']}`, sha256 `{config['sha256'].get(config['weights_file'], '')}`",
        "## Usage",
        "```python\nimport zoo\n\n"
        f'net, model_info = zoo.load_pretrained_model("hf-hub:{repo_id}", inference=True)\n'
        "transform = model_info.transform()  # the net's own preprocessing\n```",
    ]) + "\n"


def _state_specs(net: PEViT) -> list[TensorSpec]:
    specs = []
    for name, t in net.state_dict().items():
        if t.device.type == "meta":
            raise PublishError(f"tensor {name!r} is on the meta device (no values); load or train the net first")
        specs.append(TensorSpec(name, tuple(t.shape), t.dtype, lambda t=t: t.detach().to("cpu")))
    return specs


def push_to_hub(
    net: PEViT | Any, model_info: ModelInfo, repo_id: str, *, private: bool = False, token: str | None = None,
    commit_message: str | None = None, stage_dir: str | os.PathLike | None = None,
) -> str:
    """Publish ``net`` (loaded, wrapped by ``zoo.optimize`` or fine-tuned with a head) to the Hub repo ``repo_id``.

    Writes the weights with zoo metadata, ``config.json`` and a generated card, and uploads them in one
    commit (the repo is created if needed, ``private`` then applies). ``zoo.load_pretrained_model(
    "hf-hub:" + repo_id)`` loads it back. ``stage_dir``: stage there (new or empty) and keep it.
    Returns the repo's URL; errors raise ``PublishError`` with one line.
    """
    net = getattr(net, "net", net)  # an OptimizedNet publishes the net it wraps
    if not isinstance(net, PEViT):
        raise PublishError(f"push_to_hub publishes zoo PEViT nets, got {type(net).__name__}")
    check_repo_id(repo_id)
    token = hub_token(token)
    entry = _net_entry(net, model_info)
    classes = dict(model_info.class_to_idx)
    if classes and len(classes) != net.num_classes:
        raise PublishError(f"model_info.class_to_idx names {len(classes)} classes but the net has {net.num_classes}")
    config = hub_config(entry, size=model_info.size, class_to_idx=classes, num_classes=net.num_classes)
    meta = {
        "format": "pe-zoo", "name": entry.name, "family": entry.family, "variant": entry.variant,
        "config": json.dumps(entry.config.to_dict()), "signature": json.dumps(config["signature"]),
        "rgb_stats": json.dumps(model_info.rgb_stats), "num_classes": str(net.num_classes),
        "class_to_idx": json.dumps(classes), "source_repo": entry.source.repo, "zoo_version": __version__,
    }
    with tempfile.TemporaryDirectory(prefix=".pe-zoo-push-") as tmp:
        weights = Path(tmp) / entry.weights.file
        _, config["sha256"][weights.name] = write_safetensors(weights, _state_specs(net), meta)
        where = Path(stage_dir) if stage_dir is not None else Path(tmp) / "repo"
        stage([weights], where, config, repo_card(repo_id, config))
        return upload(where, repo_id, private=private, token=token,
                      message=commit_message or f"Upload {entry.name} (pe-zoo {__version__})")


def checked_weights(entry: Entry, folder: Path) -> Path:
    """The entry's converted weights in ``folder``, checked to hold this entry and (if known) the registry's sha256."""
    path = folder / entry.weights.file
    if not path.is_file():
        raise PublishError(f"no converted weights for {entry.name} at {path}; convert them first with "
                           f"`{converter_command(entry, folder)}` or pass --weights-dir")
    _check_holds(entry, path, folder)
    if entry.weights.sha256 is not None:
        sha = file_sha256(path)
        if sha != entry.weights.sha256:
            raise PublishError(f"{path} has sha256 {sha} but registry.yaml expects {entry.weights.sha256}; "
                               f"reconvert it with `{converter_command(entry, folder)} --force`")
    return path


def checked_text_weights(entry: Entry, folder: Path) -> Path | None:
    """A PE-Core entry's CLIP text file in ``folder`` (checked to hold this entry), if it is there."""
    path = folder / text_weights_file(entry)
    if entry.family != "core" or not path.is_file():
        return None
    _check_holds(entry, path, folder)
    return path


def _check_holds(entry: Entry, path: Path, folder: Path) -> None:
    try:
        held = read_metadata(path).get("name")
    except ConversionError as e:
        raise PublishError(str(e)) from None
    if held != entry.name:
        raise PublishError(f"{path} holds {held!r}, not {entry.name!r}; reconvert it with "
                           f"`{converter_command(entry, folder)} --force`")


__all__ = [
    "PublishError", "check_repo_id", "checked_text_weights", "checked_weights", "hub_config", "hub_token", "load_from_hub", "preprocessing",
    "push_to_hub", "repo_card", "stage", "upload",
]
