"""Meta's source checkpoints: fetch them from the Hub and open them (memory-mapped, no code executed)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError
from safetensors import safe_open

from zoo.registry import Entry
from zoo.weights.errors import ConversionError
from zoo.weights.hub import hub_download

Tensor = torch.Tensor


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


def load_source(path: str | os.PathLike) -> dict[str, Tensor]:
    """Open a Meta checkpoint (``.pt`` or ``.safetensors``) memory-mapped and unwrap its nesting.

    Never executes pickled code (``weights_only=True``); tensors stay backed by the file until used.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"source checkpoint {path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(9)
    try:
        if head[:4] != b"PK\x03\x04" and head[8:9] == b"{":  # safetensors: length prefix, then JSON
            with safe_open(path, framework="pt") as sf:
                obj: object = {k: sf.get_tensor(k) for k in sf.keys()}
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
        raise ConversionError(f"cannot read {path}: the file is truncated, corrupt or not a PyTorch/safetensors checkpoint ({cause}); download it again") from None
    return unwrap_state_dict(obj)


def download_source(entry: Entry, progress: bool = True) -> Path:
    """Fetch an entry's Meta checkpoint with ``huggingface_hub`` (cached, resumable) and return its local path.

    Honours ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``.
    """
    repo, file = entry.source.repo, entry.source.file
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
