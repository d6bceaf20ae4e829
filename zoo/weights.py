"""Resolve, download, verify, cache and load an entry's converted weights: the one place that does it.

Where weights come from, in order:
  (a) the weights folder (``weights_dir`` argument, else ``zoo.paths.weights_dir()``);
  (b) the converted Hub repo the registry names (``weights.hub_repo``), via ``hf_hub_download``;
  (c) Meta's original checkpoint (``source.repo``/``source.file``) from the Hub, converted once into
      the weights folder.
Every file is checked against a sha256 (the registry's, else the one recorded in a sidecar
``<file>.sha256.json`` when the zoo wrote or first verified it). The full hash is only recomputed
when the file's size, mtime, ctime or inode changed, so loading stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import tqdm as hub_tqdm
from safetensors import safe_open

from zoo import paths
from zoo.convert import ConversionError, convert_checkpoint, download_source, file_sha256, read_metadata
from zoo.convert_text import convert_text_checkpoint, text_weights_file
from zoo.nets.pe_vit import PEConfig
from zoo.registry import Entry


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for an entry could be found or produced."""

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsIntegrityError(ValueError):
    """A weights file failed verification (hash, metadata or tensors): it is never loaded."""


def converter_command(entry: Entry, folder: Path | None = None) -> str:
    """The command that (re)builds an entry's weights file from Meta's checkpoint."""
    cmd = f"python -m converters.pe_{entry.family} --variant {entry.variant}"
    if folder is not None and folder != paths.weights_dir():
        cmd += f" --out {folder}"
    return cmd


# ------------------------------------------------------------------ verification
def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the zoo records a file's sha256 (beside the real file, symlinks resolved)."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".sha256.json")


def _stamp(st: os.stat_result) -> dict[str, int]:
    # ctime changes on every write and cannot be set back with os.utime: an in-place edit is always seen
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record(path: str | os.PathLike, sha256: str) -> None:
    """Record ``sha256`` for ``path`` in its sidecar, with the file's current size/mtime/ctime/inode."""
    data = {"sha256": sha256, **_stamp(os.stat(path)), "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_atomic(sidecar_path(path), json.dumps(data, indent=1) + "\n")


def _read_record(path: str | os.PathLike) -> dict | None:
    try:
        data = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None
    except (OSError, ValueError):
        return None


def verify(path: str | os.PathLike, expected: str | None, rebuild: str) -> str:
    """Check ``path`` against ``expected`` (the registry's sha256) or its recorded sha256; return the hash.

    The full hash runs only when the file is new to the zoo or its size/mtime/ctime/inode changed.
    A mismatch raises ``WeightsIntegrityError`` naming both hashes and the ``rebuild`` command.
    """
    rec = _read_record(path)
    if rec is not None and {k: rec.get(k) for k in ("size", "mtime_ns", "ctime_ns", "inode")} == _stamp(os.stat(path)):
        sha = rec["sha256"]
    else:
        sha = file_sha256(path)
        known = expected or (rec or {}).get("sha256")
        if known is None or sha == known:
            try:
                record(path, sha)
            except OSError:  # a read-only folder: no record, so the file is hashed on every load
                pass
    if expected is not None and sha != expected:
        raise WeightsIntegrityError(
            f"{path} has sha256 {sha} but registry.yaml expects {expected}: the file is corrupted or was "
            f"replaced, so it is not loaded. Rebuild it: {rebuild} --force"
        )
    if expected is None and rec is not None and sha != rec["sha256"]:
        raise WeightsIntegrityError(
            f"{path} has sha256 {sha} but the zoo recorded {rec['sha256']} when it wrote or first verified it "
            f"({sidecar_path(path)}): the file was changed, so it is not loaded. Rebuild it with `{rebuild} --force` "
            f"(or put back the right file), then delete {sidecar_path(path)} so that the zoo records the new file"
        )
    return sha


def check_metadata(path: str | os.PathLike, entry: Entry, rebuild: str) -> dict[str, str]:
    """The file's zoo metadata, which must name ``entry`` and its exact architecture config."""
    try:
        meta = read_metadata(path)
    except ConversionError as e:
        raise WeightsIntegrityError(f"{e}. Only zoo safetensors files are loaded; rebuild it: {rebuild} --force") from None
    problem = None
    if meta.get("format") != "pe-zoo":
        problem = f"it is not a pe-zoo weights file (metadata format {meta.get('format')!r})"
    elif meta.get("name") != entry.name:
        problem = f"its metadata names the checkpoint {meta.get('name')!r}, not {entry.name!r}"
    else:
        try:
            cfg = PEConfig.from_dict(json.loads(meta.get("config", "")))
        except (ValueError, TypeError) as e:
            problem = f"its metadata config is unreadable ({e})"
        else:
            if cfg != entry.config:
                diff = {k: (v, entry.config.to_dict()[k]) for k, v in cfg.to_dict().items() if entry.config.to_dict()[k] != v}
                problem = f"its metadata config differs from the registry's (file, registry): {diff}"
    if problem:
        raise WeightsIntegrityError(f"{path} cannot be loaded as {entry.name}: {problem}. Rebuild it: {rebuild} --force")
    return meta


def check(path: str | os.PathLike, entry: Entry, rebuild: str, text: bool = False) -> None:
    """Verify a weights file for ``entry``: its sha256 (``verify``) and its metadata (``check_metadata``).

    ``text=True``: the entry's CLIP text file, whose metadata must also carry the registry's text config.
    """
    verify(path, None if text else entry.weights.sha256, rebuild)
    meta = check_metadata(path, entry, rebuild)
    if text and entry.text is not None and json.loads(meta.get("text_config", "null")) != dataclasses.asdict(entry.text):
        raise WeightsIntegrityError(
            f"{path} cannot be loaded as the text tower of {entry.name}: its metadata text_config "
            f"{meta.get('text_config')} is not the registry's {dataclasses.asdict(entry.text)}. Rebuild it: {rebuild} --force"
        )


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, memory-mapped (pages are read when used, never copied)."""
    with safe_open(Path(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# -------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Location:
    """One place an entry's weights may come from, and whether a file is there now (no network used)."""

    what: str  # "weights folder", "converted Hub repo", "Meta checkpoint"
    where: str
    path: Path | None  # the local file when present

    def status(self) -> str:
        if self.path is None:
            return "absent" if self.what == "weights folder" else "not in the local Hub cache"
        return "present" if self.what == "weights folder" else f"cached at {self.path}"


def locate(entry: Entry, weights_dir: str | os.PathLike | None = None) -> list[Location]:
    """Where ``resolve`` looks, in order, with the files present locally (weights folder, Hub cache)."""
    local = paths.weights_dir(weights_dir) / entry.weights.file
    found = [Location("weights folder", str(local), local if local.is_file() else None)]
    hub = [("converted Hub repo", entry.weights.hub_repo, entry.weights.file)] if entry.weights.hub_repo else []
    for what, repo, file in hub + [("Meta checkpoint", entry.source.repo, entry.source.file)]:
        cached = try_to_load_from_cache(repo, file)
        found.append(Location(what, f"{repo}/{file} (Hugging Face Hub)", Path(cached) if isinstance(cached, str) else None))
    return found


class _Quiet(hub_tqdm):
    """A progress bar that never shows (``progress_bar=False``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})


def _say(msg: str) -> None:
    print(f"pe-zoo: {msg}", file=sys.stderr)


def _convert(entry: Entry, source: Path, folder: Path, force: bool = False, text: bool = False) -> Path:
    file = text_weights_file(entry) if text else entry.weights.file
    _say(f"converting Meta's checkpoint {source} into {folder / file} (once; it is cached there)")
    blob = Path(os.path.realpath(source)).name  # a Hub cache blob of an LFS file is named by its sha256
    known = blob if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob) else None
    try:
        result = (convert_text_checkpoint if text else convert_checkpoint)(entry, source, folder, force=force, source_sha256=known)
    except FileExistsError:  # another process converted it meanwhile; it is verified like any file
        return folder / file
    record(result.path, result.sha256)
    return result.path


def resolve(entry: Entry, weights_dir: str | os.PathLike | None = None, progress: bool = True, text: bool = False) -> Path:
    """A verified local weights file (sha256 and metadata) for ``entry``: from the weights folder, the
    converted Hub repo, or Meta's checkpoint converted on the spot. Raises ``WeightsNotFoundError``
    saying where it looked. ``text=True``: the CLIP text file of a PE-Core entry, found the same way."""
    folder = paths.weights_dir(weights_dir)
    file = text_weights_file(entry) if text else entry.weights.file
    local = folder / file
    rebuild = converter_command(entry, folder)
    if local.is_file():
        try:
            check(local, entry, rebuild, text)
        except WeightsIntegrityError as e:
            source = try_to_load_from_cache(entry.source.repo, entry.source.file)
            if not isinstance(source, str):
                raise
            warnings.warn(f"{e}\nRebuilding it now from Meta's checkpoint in the Hub cache.", stacklevel=3)
            _say(f"WARNING: {local} failed verification; rebuilding it from {source}")
            local = _convert(entry, Path(source), folder, force=True, text=text)
            check(local, entry, rebuild, text)
        return local
    looked = [f"{local} (the weights folder)"]
    if entry.weights.hub_repo:
        try:
            hub_file = Path(hf_hub_download(entry.weights.hub_repo, file, tqdm_class=None if progress else _Quiet))
        except (OSError, EntryNotFoundError, ValueError) as e:
            looked.append(f"{file} in the Hub repo {entry.weights.hub_repo} ({type(e).__name__})")
        else:
            check(hub_file, entry, rebuild, text)
            return hub_file
    try:
        source = download_source(entry, progress=progress)
    except ConversionError as e:
        looked.append(f"Meta's {entry.source.file} in the Hub repo {entry.source.repo} ({e})")
        raise WeightsNotFoundError(
            f"no weights for {entry.name}; looked for: " + "; ".join(looked)
            + f". With Hub access they are fetched automatically; or build them with: {rebuild}"
            + " (add --checkpoint PATH for a local copy of Meta's file)"
        ) from None
    path = _convert(entry, source, folder, text=text)
    check(path, entry, rebuild, text)
    return path
