"""What the evaluations read: labelled image folders (or ``zoo embed`` folders), image-caption pairs,
class names and prompt templates (ImageNet-1k's and CLIP's shipped in ``zoo/eval/data/``)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zoo.collection import expand_inputs, read_embeddings, read_manifest
from zoo.collection.store import MANIFEST, SETTINGS

BUILTIN_CLASSNAMES = {"imagenet": "imagenet_classnames.txt"}
BUILTIN_TEMPLATES = {"imagenet": "imagenet_templates.txt", "simple": "simple_templates.txt"}


@dataclass
class Labelled:
    """Labelled examples: image ``paths`` to embed, or the ``rows`` of a ``zoo embed`` folder (``manifest`` set)."""

    root: Path
    classes: list[str]
    labels: list[int]
    paths: list[str]
    rows: Any = None  # zoo.collection.MappedRows when read from a zoo embed folder
    manifest: dict[str, Any] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)


def _sorted_classes(names: set[str] | list[str]) -> list[str]:
    """Class names in index order: numerically when every name is an integer (ImageNet-V2's 0..999), else as text."""
    names = list(names)
    return sorted(names, key=int) if names and all(n.isdigit() for n in names) else sorted(names)


def is_collection(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``zoo embed``."""
    p = Path(path)
    return (p / MANIFEST).is_file() or (p / SETTINGS).is_file()


def read_labelled(root: str | os.PathLike) -> Labelled:
    """An ImageFolder tree (one sub-folder of images per class) or a ``zoo embed`` folder of such a tree."""
    root = Path(root)
    if is_collection(root):
        return _read_collection(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; give an image folder with one sub-folder of images per class, or a `zoo embed` folder")
    folders = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not folders:
        raise ValueError(f"{root} has no class sub-folders; an image folder holds one sub-folder of images per class")
    classes = _sorted_classes([d.name for d in folders])
    paths, labels = [], []
    for index, name in enumerate(classes):
        try:
            images = expand_inputs([str(root / name)])
        except ValueError:
            raise ValueError(f"class folder {root / name} holds no images; add images or remove the folder") from None
        paths += images
        labels += [index] * len(images)
    return Labelled(root, classes, labels, paths)


def _read_collection(root: Path) -> Labelled:
    manifest = read_manifest(root)
    paths, rows = read_embeddings(root)
    names = [Path(p).parent.name for p in paths]
    classes = _sorted_classes(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return Labelled(root, classes, [index[n] for n in names], paths, rows, manifest)


def align(train: Labelled, val: Labelled) -> list[int]:
    """``val``'s labels in ``train``'s class indices; a class of ``val`` that ``train`` lacks is an error."""
    index = {c: i for i, c in enumerate(train.classes)}
    missing = sorted(set(val.classes) - set(index))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{val.root} has classes that {train.root} lacks ({shown}); give both the same class folders")
    return [index[val.classes[label]] for label in val.labels]


def _lines(spec: str, builtin: dict[str, str], what: str) -> list[str]:
    if spec in builtin:
        text = (resources.files("zoo.eval") / "data" / builtin[spec]).read_text(encoding="utf-8")
    else:
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except OSError as e:
            choices = " or ".join(sorted(builtin))
            raise ValueError(f"cannot read the {what} file {spec!r} ({e.strerror or e}); give a text file, one a line, or {choices}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"the {what} file {spec!r} is empty; write one a line")
    return lines


def class_names(spec: str | None, data: Labelled) -> list[str]:
    """The prompt names of ``data``'s classes: from a file (one a line, in folder order) or ``imagenet``; else the folder names."""
    if spec is None:
        return list(data.classes)
    names = _lines(spec, BUILTIN_CLASSNAMES, "class-name")
    if len(names) != len(data.classes):
        raise ValueError(
            f"the class-name file {spec!r} has {len(names)} names but {data.root} has {len(data.classes)} class folders; "
            "give one name per class folder, in the folders' sorted order"
        )
    return names


def templates(spec: str) -> list[str]:
    """Prompt templates, each with one ``{}``: a file (one a line), ``imagenet`` (CLIP's 80) or ``simple`` (CLIP's 7)."""
    return _lines(spec, BUILTIN_TEMPLATES, "template")


@dataclass
class Pairs:
    """Images and captions: ``caption_image[j]`` is the index in ``images`` that caption ``j`` describes."""

    images: list[str]
    captions: list[str]
    caption_image: list[int]


def _rows(path: Path) -> list[tuple[str, str | list[str], str]]:
    """(image, caption or captions, where) from a CSV, a JSON-lines or a COCO-captions JSON file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a CSV pairs file needs a header with 'image' and 'caption' columns, got {reader.fieldnames}")
        return [(r["image"], r["caption"], f"line {n}") for n, r in enumerate(reader, start=2)]
    if path.suffix.lower() == ".json":
        try:
            coco = json.loads(text)
            names = {im["id"]: im["file_name"] for im in coco["images"]}
            return [(names[a["image_id"]], a["caption"], f"annotation {n}") for n, a in enumerate(coco["annotations"])]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a COCO captions file ({type(e).__name__}: {e}); give "
                             "{'images': [{'id', 'file_name'}], 'annotations': [{'image_id', 'caption'}]}, or CSV / JSON lines") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            rows.append((item["image"], item.get("caption", item.get("captions")), f"line {n}"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path} line {n} is not a JSON object with 'image' and 'caption'; "
                             "write one {\"image\": ..., \"caption\": ...} a line (or use .csv / COCO .json)") from None
    return rows


def read_pairs(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> Pairs:
    """Image-caption pairs from ``path`` (CSV with ``image,caption``; JSON lines with ``image`` and ``caption``,
    a string or a list; a COCO captions ``.json``). Relative image paths are taken from ``images_dir``, else
    from the pairs file's folder. An image may have several captions (rows)."""
    path = Path(path)
    try:
        rows = _rows(path)
    except OSError as e:
        raise ValueError(f"cannot read the pairs file {path} ({e.strerror or e})") from None
    base = Path(images_dir) if images_dir is not None else path.parent
    images: list[str] = []
    index: dict[str, int] = {}
    captions, owner = [], []
    for image, caption, where in rows:
        texts = caption if isinstance(caption, list) else [caption]
        if not image or not all(isinstance(t, str) and t.strip() for t in texts) or not texts:
            raise ValueError(f"{path} {where}: every pair needs an image and a non-empty caption")
        full = str(base / image)
        if full not in index:
            if not os.path.isfile(full):
                raise ValueError(f"{path} {where} names the image {full}, which does not exist; fix the path or pass --images DIR")
            index[full] = len(images)
            images.append(full)
        captions += texts
        owner += [index[full]] * len(texts)
    if not images:
        raise ValueError(f"{path} holds no pairs; write one image and caption a row")
    return Pairs(images, captions, owner)


__all__ = [
    "BUILTIN_CLASSNAMES", "BUILTIN_TEMPLATES", "Labelled", "Pairs", "align", "class_names", "is_collection", "read_labelled",
    "read_pairs", "templates",
]
