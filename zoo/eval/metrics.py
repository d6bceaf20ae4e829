"""Scores to figures: top-k accuracy and per-class accuracy (fractions 0-1)."""

from __future__ import annotations

import torch


def ranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best classes per row [N, k], best first; equal scores go to the lower class index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, classes: list[str], top5: int = 5) -> dict:
    """``{top1, top5, per_class, n}`` from class scores [N, C] and true labels [N]; top-5 counts the first
    ``min(top5, C)`` classes; ``per_class`` maps each class name to its top-1 accuracy (None without images)."""
    best = ranked(scores, min(top5, scores.shape[1]))
    hit1 = best[:, 0] == labels
    hit5 = (best == labels[:, None]).any(dim=1)
    per_class = {}
    for index, name in enumerate(classes):
        mine = labels == index
        per_class[name] = _fraction(hit1[mine]) if mine.any() else None
    return {"top1": _fraction(hit1), "top5": _fraction(hit5), "per_class": per_class, "n": len(labels)}


def _fraction(hits: torch.Tensor) -> float:
    return int(hits.sum()) / max(len(hits), 1)


__all__ = ["classification_metrics", "ranked"]
