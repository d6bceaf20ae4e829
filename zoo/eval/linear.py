"""A linear probe on frozen embeddings: multinomial logistic regression (scikit-learn, L-BFGS) on the
L2-normalised embeddings, its inverse regularisation strength C chosen on a held-out fifth of the training
set, then refitted on all of it."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from zoo.eval.embed import Compute
from zoo.eval.features import as_rows, labelled_features
from zoo.eval.metrics import classification_metrics

log = logging.getLogger("zoo")
C_GRID = tuple(10.0 ** e for e in range(-2, 5))  # 0.01 ... 10,000
HELD_OUT = 0.2


def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError('the linear probe needs scikit-learn: pip install "pe-zoo[eval]"') from None
    return LogisticRegression, train_test_split


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int = 0, grid: tuple[float, ...] = C_GRID, max_iter: int = 1000):
    """A logistic regression on normalised rows ``x``, C chosen by accuracy on a stratified held-out part of ``x``."""
    LogisticRegression, train_test_split = _sklearn()
    if len(np.unique(y)) < 2:
        raise ValueError("the linear probe needs at least two classes with training images")
    try:  # every class on both sides, where the counts allow it
        xa, xb, ya, yb = train_test_split(x, y, test_size=HELD_OUT, random_state=seed, stratify=y)
    except ValueError:
        xa, xb, ya, yb = train_test_split(x, y, test_size=HELD_OUT, random_state=seed)
    scores = []
    for c in grid:
        probe = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(xa, ya)
        scores.append(probe.score(xb, yb))
    best = grid[int(np.argmax(scores))]  # the first (strongest regularisation) of equal scores
    log.info("linear probe: C = %g chosen (held-out accuracy %.4f)", best, max(scores))
    return LogisticRegression(C=best, max_iter=max_iter, random_state=seed).fit(x, y), best


def linear(name: str, train: str | os.PathLike, val: str | os.PathLike, *, seed: int = 0, compute: Compute | None = None) -> dict:
    """Top-1/top-5 of a linear probe of ``name`` trained on ``train`` and measured on ``val`` (image folders or
    ``zoo embed`` folders of them); the JSON also holds ``C``, the chosen regularisation."""
    feats = labelled_features(name, train, val, compute or Compute())
    x = torch.nn.functional.normalize(torch.cat([as_rows(b) for b in feats.train_blocks]), dim=-1)
    probe, c = fit_probe(x.numpy(), feats.train_labels.numpy(), seed)
    scores = torch.full((len(feats.val), len(feats.classes)), float("-inf"))
    scores[:, torch.as_tensor(probe.classes_)] = torch.as_tensor(probe.predict_log_proba(feats.val.numpy()), dtype=torch.float32)
    return {**classification_metrics(scores, feats.val_labels, feats.classes), "C": c}


__all__ = ["C_GRID", "fit_probe", "linear"]
