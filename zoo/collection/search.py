"""Search a collection: text and image queries, answered by its index when current, else the exact scan."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from zoo.collection.read import open_rows, read_manifest, shard_paths
from zoo.collection.scan import top_k
from zoo.collection.store import CollectionError

log = logging.getLogger("zoo")


@dataclass(frozen=True)
class Hit:
    """One search result: ``rank`` (1 = best), cosine ``score``, the image ``path`` and its ``row`` in the collection;
    for a video row also ``start`` and ``end`` (seconds) of the moment it embeds."""

    rank: int
    score: float
    path: str
    row: int
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d if self.start is not None else {k: v for k, v in d.items() if k not in ("start", "end")}


class Hits(list):
    """The hits of ``search``, best first, with ``method`` (``"index"`` or ``"exact"``) and ``reason`` (why the exact scan)."""

    def __init__(self, hits: list[Hit], method: str, reason: str | None) -> None:
        super().__init__(hits)
        self.method, self.reason = method, reason


def check_weights(manifest: dict[str, Any], weights_dir) -> None:
    """Refuse to embed a query with weights other than those the collection was embedded with (by sha256)."""
    from zoo import weights
    from zoo.registry import get_entry

    entry = get_entry(manifest["model"])
    now = weights.verify(weights.resolve(entry, weights_dir, progress=False), entry.weights.sha256,
                         weights.converter_command(entry))
    if now != manifest["weights_sha256"]:
        raise CollectionError(
            f"the weights of {entry.name} are not the ones this collection was embedded with (sha256 {now[:12]}... now, "
            f"{manifest['weights_sha256'][:12]}... in its manifest): a query would be compared with rows of another "
            "model. Put back the weights it was embedded with, or embed the collection again (a new --out), "
            "or search with a vector of your own"
        )


def _text_query(manifest: dict[str, Any], text: str, device: str | None, weights_dir) -> np.ndarray:
    if manifest["what"] != "clip":
        raise CollectionError(
            f"a text query needs CLIP embeddings, but this collection holds {manifest['what']!r} rows: "
            f"embed it with `python -m zoo embed {manifest['model']} ... --what clip` to search it by text"
        )
    from zoo.clip import get_tokenizer, load_pretrained_clip

    model = load_pretrained_clip(manifest["model"], inference=True, device=device, dtype=getattr(torch, manifest["dtype"]),
                                 weights_dir=weights_dir)  # the collection's compute dtype, whatever the file's
    tokens = get_tokenizer(manifest["model"])([text]).to(device or "cpu")
    with torch.inference_mode():
        return model.encode_text(tokens).float().cpu().numpy()[0]


def _image_query(manifest: dict[str, Any], image, device: str | None, weights_dir) -> np.ndarray:
    from zoo.inference import open_image
    from zoo.loader import load_pretrained_model
    from zoo.transforms import classification_transform

    dtype = getattr(torch, manifest["dtype"])
    net, info = load_pretrained_model(manifest["model"], inference=True, dtype=dtype, device=device,
                                      new_size=tuple(manifest["size"]), weights_dir=weights_dir)
    x = classification_transform(info.size, info.rgb_stats)(open_image(image)).unsqueeze(0).to(device or "cpu", dtype)
    method = net.clip_embedding if manifest["what"] == "clip" else net.embedding
    with torch.inference_mode():
        return method(x).float().cpu().numpy()[0]


def search(
    directory: str | os.PathLike,
    query: np.ndarray | torch.Tensor | None = None,
    k: int = 10,
    *,
    text: str | None = None,
    image: str | os.PathLike | Any | None = None,
    device: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    exact: bool = False,
) -> Hits:
    """The ``k`` images of the collection in ``directory`` closest (cosine) to one query.

    Give exactly one of ``query`` (a vector of the collection's width), ``text`` (through the PE-Core text
    tower of the collection's model; the collection must hold ``clip`` rows) or ``image`` (a path or PIL
    image, embedded exactly like the collection). A text or image query is refused (``CollectionError``)
    when the model's weights are not those the collection records (sha256). A current index
    (``python -m zoo index``) answers unless ``exact=True``; otherwise the exact scan does. ``hits.method``
    says which, ``hits.reason`` why the scan.
    """
    if sum(q is not None for q in (query, text, image)) != 1:
        raise ValueError("give exactly one query: a vector, text=... or image=...")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if text is not None and not text.strip():
        raise ValueError("the text query is empty; give some words, e.g. --text \"a red bicycle\"")
    manifest = read_manifest(directory)
    if text is not None:
        if manifest["what"] == "clip":
            check_weights(manifest, weights_dir)
        query = _text_query(manifest, text, device, weights_dir)
    elif image is not None:
        check_weights(manifest, weights_dir)
        query = _image_query(manifest, image, device, weights_dir)
    rows = open_rows(directory, manifest)
    from zoo.collection.index import search_rows

    scores, index, method, reason = search_rows(directory, manifest, rows, query, k, exact=exact)
    shard_of = np.searchsorted(rows.offsets, index, side="right") - 1
    paths = {s: shard_paths(directory, manifest, s) for s in set(shard_of.tolist())}  # only the shards hit
    hits = [Hit(r, float(score), paths[s][int(i - rows.offsets[s])], int(i))
            for r, (score, i, s) in enumerate(zip(scores, index, shard_of), 1)]
    if manifest.get("video"):  # video rows: the moment each hit embeds
        from zoo.collection.media import with_times

        hits = with_times(directory, manifest, hits, rows.offsets, shard_of)
    return Hits(hits, method, reason)


__all__ = ["Hit", "Hits", "check_weights", "search", "top_k"]
