"""Weighted k-nearest-neighbour classification on frozen embeddings, DINO's protocol (Caron et al. 2021):
cosine similarity to every training embedding; the k most similar vote for their class with weight
exp(similarity / T), T = 0.07; the classes are ranked by their summed votes."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from zoo.eval.embed import Compute
from zoo.eval.features import as_rows, labelled_features
from zoo.eval.metrics import classification_metrics

TEMPERATURE = 0.07


def knn_scores(train: Iterable[torch.Tensor | np.ndarray], train_labels: torch.Tensor, val: torch.Tensor, num_classes: int,
               k: int = 20, temperature: float = TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """Class votes [N, C] of normalised ``val`` rows [N, D] from ``train`` (normalised row blocks, in order, any
    number: a large set is never held at once) with labels ``train_labels``."""
    blocks = list(train)
    sims, idx = [], []
    for start in range(0, len(val), chunk):
        v = val[start:start + chunk]
        best_s = torch.full((len(v), 0), float("-inf"))
        best_i = torch.zeros((len(v), 0), dtype=torch.long)
        offset = 0
        for block in blocks:
            s = v @ F.normalize(as_rows(block), dim=-1).T
            top = s.topk(min(k, s.shape[1]), dim=1)
            merged_s = torch.cat([best_s, top.values], dim=1)
            merged_i = torch.cat([best_i, top.indices + offset], dim=1)
            keep = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_s, best_i = keep.values, merged_i.gather(1, keep.indices)
            offset += len(block)
        sims.append(best_s)
        idx.append(best_i)
    sims, idx = torch.cat(sims), torch.cat(idx)
    votes = torch.zeros(len(val), num_classes)
    return votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())


def knn(name: str, train: str | os.PathLike, val: str | os.PathLike, *, k: int = 20, temperature: float = TEMPERATURE,
        compute: Compute | None = None) -> dict:
    """DINO's weighted k-NN top-1/top-5 of ``name`` with ``train`` as the memory and ``val`` as the queries.

    Each is an ImageFolder tree or a ``zoo embed`` folder of one (labels from the folder names in its paths).
    """
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    feats = labelled_features(name, train, val, compute or Compute())
    scores = knn_scores(feats.train_blocks, feats.train_labels, feats.val, len(feats.classes), k, temperature)
    # DINO counts a top-5 hit among the first min(5, k) classes: those that got votes
    return classification_metrics(scores, feats.val_labels, feats.classes, top5=min(5, k))


__all__ = ["TEMPERATURE", "knn", "knn_scores"]
