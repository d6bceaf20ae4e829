"""Try everything offline: seeded random checkpoints in Meta's exact layout, installed into the Hugging Face Hub
cache where the zoo looks for Meta's files, so every loader works with ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import constants

from zoo.registry import get_entry
from zoo.testing.hub_cache import add_file
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict

log = logging.getLogger("zoo")


def hub_cache_dir() -> Path:
    """The Hub cache ``hf_hub_download`` uses: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    return Path(constants.HF_HUB_CACHE).expanduser()


def install_random_weights(names: str | Iterable[str], cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write seeded RANDOM checkpoints in Meta's layout for the registry ``names`` into the Hub cache; return the cache.

    Each goes where the zoo fetches Meta's real file (the entry's source repo and file name), so
    ``zoo.load_pretrained_model(name)`` converts and loads it offline (``HF_HUB_OFFLINE=1``); a PE-Core
    checkpoint holds its text tower too, for ``zoo.load_pretrained_clip(name)``. ``cache_dir``: the default
    is huggingface_hub's cache (``HF_HUB_CACHE`` / ``HF_HOME`` honoured). The outputs mean nothing: use them
    to try the code paths, never to judge the model. A weights file already converted in the zoo's weights
    folder is used before the cache: remove it (or use another ``ZOO_HOME``) to switch between real and random.
    """
    names = [names] if isinstance(names, str) else list(names)
    entries = [get_entry(n) for n in names]  # every name checked before anything is written
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.text is not None:
            state = meta_clip_state_dict(entry.config, entry.text, seed=seed)
        else:
            state = meta_vision_state_dict(entry.config, seed=seed)
        with tempfile.TemporaryDirectory(prefix=".pe-zoo-random-", dir=cache) as tmp:
            src = Path(tmp) / entry.source.file
            torch.save(state, src)
            add_file(cache, entry.source.repo, entry.source.file, src)
        log.info("installed RANDOM weights for %s as %s/%s in %s", entry.name, entry.source.repo, entry.source.file, cache)
    return cache


__all__ = ["hub_cache_dir", "install_random_weights"]
