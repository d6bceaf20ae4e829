"""Zero-shot classification of an image folder with a PE-Core CLIP model, as CLIP evaluates ImageNet:
each class's prompts (the templates filled with its name) embedded, normalised, averaged and normalised again
(``zoo.clip.zero_shot_classifier``); an image goes to the class whose embedding is closest."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from zoo.eval import data as eval_data
from zoo.eval.embed import Compute, embed_images, load_clip, normalized
from zoo.eval.metrics import classification_metrics


@dataclass
class ZeroShotResult:
    """``metrics`` (the JSON: top1, top5, per_class, n), the per-image class ``scores`` [N, C] and true ``labels``."""

    metrics: dict
    scores: torch.Tensor
    labels: torch.Tensor


def zeroshot(name: str, data: str | os.PathLike, *, classnames: str | None = None, templates: str = "imagenet",
             compute: Compute | None = None) -> ZeroShotResult:
    """Zero-shot top-1/top-5 of ``name`` (a PE-Core registry name or a fine-tuned file of one) on the ImageFolder ``data``.

    ``classnames``: a file (one name a line, in the folders' sorted order) or ``"imagenet"``; default the folder names.
    ``templates``: a file (one template a line, ``{}`` for the name), ``"imagenet"`` (CLIP's 80) or ``"simple"`` (CLIP's 7).
    """
    from zoo.clip import get_tokenizer, zero_shot_classifier

    compute = compute or Compute()
    folder = eval_data.read_labelled(data)
    if folder.rows is not None:
        raise ValueError(f"{data} is a `zoo embed` folder; zero-shot needs the images (give the image folder)")
    names = eval_data.class_names(classnames, folder)
    prompts = eval_data.templates(templates)
    clip, net, info = load_clip(name, compute)
    classifier = zero_shot_classifier(clip, get_tokenizer(info.name), names, prompts).float().cpu()
    images = normalized(embed_images(net, info, folder.paths, compute, clip=True, desc="zero-shot"))
    scores = images @ classifier
    labels = torch.tensor(folder.labels)
    return ZeroShotResult(classification_metrics(scores, labels, folder.classes), scores, labels)


__all__ = ["ZeroShotResult", "zeroshot"]
