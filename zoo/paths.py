"""Where the zoo keeps converted weights."""

from __future__ import annotations

import os
from pathlib import Path


def weights_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The weights folder: ``override``, else ``$ZOO_HOME/weights``, else ``$XDG_CACHE_HOME/pe-zoo/weights``
    (``~/.cache/pe-zoo/weights``); never the current folder."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("ZOO_HOME"):
        return Path(os.environ["ZOO_HOME"]).expanduser() / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "pe-zoo" / "weights"


__all__ = ["weights_dir"]
