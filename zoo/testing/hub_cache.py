"""A Hugging Face Hub cache folder built locally: used by the demo and the tests to run the real
``hf_hub_download`` code paths offline (layout ``models--org--name/{blobs,refs,snapshots}``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants

from zoo.weights.integrity import file_sha256


def add_file(cache_dir: str | os.PathLike, repo_id: str, filename: str, src: str | os.PathLike) -> Path:
    """Copy ``src`` into ``cache_dir`` as ``filename`` of model repo ``repo_id`` at revision ``main``.

    The blob is named by its sha256 and linked from the snapshot, as ``hf_hub_download`` leaves it.
    """
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    refs = repo / "refs" / "main"
    if refs.is_file():
        commit = refs.read_text().strip()
    else:
        commit = hashlib.sha1(f"pe-zoo local cache {repo_id}".encode()).hexdigest()
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)
    blob = repo / "blobs" / file_sha256(src)
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, blob)
    link = repo / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


@contextlib.contextmanager
def use_cache(cache_dir: str | os.PathLike, offline: bool = True) -> Iterator[Path]:
    """Point ``huggingface_hub`` at ``cache_dir`` (and offline mode) for the duration of the block.

    ``huggingface_hub`` reads ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` at import, so its constants are set
    too; the environment is set for child processes. Everything is restored afterwards.
    """
    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    saved_consts = (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)
    os.environ["HF_HUB_CACHE"] = str(cache_dir)
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache_dir), offline
    try:
        yield Path(cache_dir)
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved_consts
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


__all__ = ["add_file", "use_cache"]
