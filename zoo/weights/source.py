"""Meta's source checkpoints: fetch them from the Hub and open them (memory-mapped, no code executed)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError
from safetensors import safe_open

from zoo.registry import Entry
from zoo.weights.errors import ConversionError
from zoo.weights.hub import hub_download

Tensor = torch.Tensor
# how torch.save's legacy format begins: a pickled magic number (protocol 2, a 10-byte long)
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def unwrap_state_dict(obj: object) -> dict[str, Tensor]:
    """Undo the nestings Meta-style files use: ``state_dict``/``weights`` wrappers and ``module.`` prefixes."""
    for _ in range(3):
        inner = next((obj[k] for k in ("state_dict", "weights") if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError("the checkpoint holds no state dict (expected a mapping of parameter names to tensors)")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise ConversionError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (a folder, a dangling link), or None when it is a file or absent."""
    if path.is_symlink() and not path.exists():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    if path.exists() and not path.is_file():
        return "is a folder, not a file" if path.is_dir() else "is not a regular file"
    return None


def load_source(path: str | os.PathLike) -> dict[str, Tensor]:
    """Open a Meta checkpoint (``.pt`` or ``.safetensors``) memory-mapped and unwrap its nesting.

    Never executes pickled code (``weights_only=True``); tensors stay backed by the file until used.
    """
    path = Path(path)
    if not path.is_file():
        problem = not_a_file(path) or "does not exist"
        raise ConversionError(f"source checkpoint {path} {problem}")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    try:
        if head[:4] != b"PK\x03\x04" and head[8:9] == b"{":  # safetensors: length prefix, then JSON
            with safe_open(path, framework="pt") as sf:
                obj: object = {k: sf.get_tensor(k) for k in sf.keys()}
        elif head == _LEGACY_MAGIC:  # torch.save's legacy (non-zip) format cannot be memory-mapped: read whole
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file; name the file and the cause
        if "Weights only load failed" in str(e):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            raise ConversionError(
                f"{path} holds pickled objects other than tensors ({found.group(1) if found else 'see torch.load'}), "
                "which are refused: no code is executed when loading; use Meta's original checkpoint"
            ) from None
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:300]
        raise ConversionError(
            f"cannot read {path}: the file is truncated, corrupt or not a PyTorch/safetensors checkpoint ({cause}); "
            + refetch_hint(path)
        ) from None
    return unwrap_state_dict(obj)


def _hub_cache_file(path: Path) -> tuple[str, str, Path] | None:
    """(repo, file, blob) when ``path`` is a file of the Hugging Face Hub cache (``models--org--name/snapshots/rev/file``)."""
    parts = path.absolute().parts
    for i, part in enumerate(parts[:-3]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            repo = part[len("models--"):].replace("--", "/", 1)
            return repo, "/".join(parts[i + 3:]), Path(os.path.realpath(path))
    return None


def refetch_hint(path: Path) -> str:
    """How to get a good copy of a bad source file: a Hub-cache file must be deleted (or force-downloaded),
    since the cache keeps serving the bad copy; any other file is simply downloaded again."""
    hub = _hub_cache_file(path)
    if hub is None:
        return "download it again"
    repo, file, blob = hub
    return (
        f"it is the Hugging Face Hub cache's copy of {file} of {repo}, which the cache keeps serving: delete {blob} "
        f"(and the link {path}) so that it is downloaded again, or download it once with "
        f"huggingface_hub.hf_hub_download({repo!r}, {file!r}, force_download=True)"
    )


def download_source(entry: Entry, progress: bool = True) -> Path:
    """Fetch an entry's Meta checkpoint with ``huggingface_hub`` (cached, resumable) and return its local path.

    Honours ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``. A checkpoint already in the
    Hub cache is used without asking the network (Meta's files do not change, and what is converted from
    them is verified), so a machine without network never waits on a timeout for a file it has.
    """
    repo, file = entry.source.repo, entry.source.file
    cached = try_to_load_from_cache(repo, file)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return hub_download(repo, file, progress=progress)
    except GatedRepoError as e:
        raise ConversionError(f"{repo} is gated: accept its terms on huggingface.co and set HF_TOKEN ({e})") from None
    except (OSError, EntryNotFoundError) as e:
        raise ConversionError(
            f"cannot get {file} of {repo} from the Hugging Face Hub ({type(e).__name__}: {e}). If you are offline "
            f"(HF_HUB_OFFLINE=1) it is not in the cache yet; connect and retry, or pass --checkpoint PATH to a local copy"
        ) from None


__all__ = ["download_source", "load_source", "unwrap_state_dict"]
