"""The one door to the Hugging Face Hub for downloads: identifies the library, and silences progress on request."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.utils import tqdm as hub_tqdm

from zoo.version import __version__


class QuietProgress(hub_tqdm):
    """A Hub progress bar that never shows (``progress=False``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})


def hub_download(repo_id: str, filename: str, *, progress: bool = True, **kwargs) -> Path:
    """``hf_hub_download`` of one file (cached, resumable; ``HF_HUB_OFFLINE``/``HF_TOKEN`` honoured),
    identified to the Hub as ``pe-zoo`` with its version."""
    path = hf_hub_download(
        repo_id, filename, library_name="pe-zoo", library_version=__version__,
        tqdm_class=None if progress else QuietProgress, **kwargs,
    )
    return Path(path)


__all__ = ["QuietProgress", "hub_download"]
