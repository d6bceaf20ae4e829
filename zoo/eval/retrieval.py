"""Image-text retrieval with a PE-Core CLIP model, scored as CLIP papers (and Meta's CLIP_benchmark harness) do.

Text to image: a caption is found at rank k when one of its images is among the k images closest to it.
Image to text: an image is found when one of its captions is among the k closest captions. Captions with the
same text count as one caption of every image they describe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from zoo.eval import data as eval_data
from zoo.eval.embed import Compute, embed_images, load_clip, normalized

KS = (1, 5, 10)
CURVE = 50  # recall@k is kept for k = 1..CURVE (the plot's curves)


@dataclass
class RetrievalResult:
    """``metrics`` (the JSON) and, per query, the 0-based rank of its first match: ``text_ranks`` [T], ``image_ranks`` [I]."""

    metrics: dict
    text_ranks: torch.Tensor
    image_ranks: torch.Tensor


def first_match_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Per row of ``scores`` [Q, N]: how many candidates score higher than the row's best positive (0 = found first)."""
    best = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    return (scores > best).sum(dim=1)


def recall(ranks: torch.Tensor, k: int) -> float:
    """The share of queries whose first match is among the ``k`` best."""
    return int((ranks < k).sum()) / max(len(ranks), 1)


def retrieval_metrics(images: torch.Tensor, texts: torch.Tensor, pairs: eval_data.Pairs, chunk: int = 1024) -> RetrievalResult:
    """Recall@k both ways from normalised image [I, D] and text [T, D] embeddings of ``pairs``."""
    groups: dict[str, set[int]] = {}
    for caption, image in zip(pairs.captions, pairs.caption_image):
        groups.setdefault(caption, set()).add(image)
    owners = [sorted(groups[c]) for c in pairs.captions]  # the images each caption describes (same text, same images)
    positive = torch.zeros(len(texts), len(images), dtype=torch.bool)
    for row, images_of in enumerate(owners):
        positive[row, images_of] = True
    text_ranks = torch.cat([first_match_ranks(t @ images.T, p) for t, p in zip(texts.split(chunk), positive.split(chunk))])
    image_ranks = torch.cat([first_match_ranks(i @ texts.T, p) for i, p in zip(images.split(chunk), positive.T.split(chunk))])
    metrics = {
        "image_to_text": {f"recall@{k}": recall(image_ranks, k) for k in KS},
        "text_to_image": {f"recall@{k}": recall(text_ranks, k) for k in KS},
        "curves": {"k": list(range(1, CURVE + 1)),
                   "image_to_text": [recall(image_ranks, k) for k in range(1, CURVE + 1)],
                   "text_to_image": [recall(text_ranks, k) for k in range(1, CURVE + 1)]},
        "images": len(images), "captions": len(texts),
    }
    return RetrievalResult(metrics, text_ranks, image_ranks)


@torch.inference_mode()
def _encode_texts(clip, tokenizer, captions: list[str], compute: Compute) -> torch.Tensor:
    p = clip.logit_scale
    out = []
    with tqdm(total=len(captions), desc="captions", unit="text", disable=not compute.progress, leave=False) as bar:
        for start in range(0, len(captions), compute.batch_size):
            batch = captions[start:start + compute.batch_size]
            tokens = tokenizer(batch, context_length=clip.context_length).to(p.device)
            out.append(clip.encode_text(tokens).float().cpu())
            bar.update(len(batch))
    return torch.cat(out)


def retrieval(name: str, pairs: str | os.PathLike, *, images_dir: str | os.PathLike | None = None,
              compute: Compute | None = None) -> RetrievalResult:
    """Image-text recall@1/5/10 of ``name`` (a PE-Core registry name or a fine-tuned file of one) on a pairs file
    (CSV ``image,caption``, JSON lines, or COCO captions ``.json``; see ``zoo.eval.data.read_pairs``)."""
    from zoo.clip import get_tokenizer

    compute = compute or Compute()
    found = eval_data.read_pairs(pairs, images_dir)
    clip, net, info = load_clip(name, compute)
    texts = normalized(_encode_texts(clip, get_tokenizer(info.name), found.captions, compute))
    images = normalized(embed_images(net, info, found.images, compute, clip=True, desc="images"))
    return retrieval_metrics(images, texts, found)


__all__ = ["KS", "RetrievalResult", "first_match_ranks", "retrieval", "retrieval_metrics"]
