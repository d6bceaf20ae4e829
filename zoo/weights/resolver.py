"""Resolve an entry's converted weights: find, download or convert them, and verify them before use.

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

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError

from zoo import paths
from zoo.registry import Entry
from zoo.weights.convert import convert_checkpoint
from zoo.weights.convert_text import convert_text_checkpoint, text_weights_file
from zoo.weights.errors import ConversionError, OutputError, WeightsIntegrityError, WeightsNotFoundError
from zoo.weights.hub import hub_download
from zoo.weights.integrity import check
from zoo.weights.mapping import map_tensors
from zoo.weights.source import download_source, not_a_file, refetch_hint

log = logging.getLogger("zoo")


def converter_command(entry: Entry, folder: Path | None = None, text: bool = False) -> str:
    """The command that (re)builds an entry's weights file (``text=True``: its CLIP text file alone) from Meta's checkpoint."""
    size, _, tiling = entry.variant.partition("-")
    cmd = f"python -m converters.pe_{entry.family} --variant {size}" + (" --tiling" if tiling else "") + (" --text-only" if text else "")
    if folder is not None and folder != paths.weights_dir():
        cmd += f" --out {folder}"
    return cmd


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, memory-mapped (pages are read when used, never copied;
    one mapping per tensor, so a tensor's pages are released with it)."""
    return map_tensors(path)


@dataclass(frozen=True)
class Location:
    """One place an entry's weights may come from, and whether a file is there now (no network used)."""

    what: str  # "weights folder", "converted Hub repo", "Meta checkpoint"
    where: str
    path: Path | None  # the local file when present
    problem: str | None = None  # what stands where the file should be (a folder, a dangling link)

    def status(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.path is None:
            return "absent" if self.what == "weights folder" else "not in the local Hub cache"
        return "present" if self.what == "weights folder" else f"cached at {self.path}"


def locate(entry: Entry, weights_dir: str | os.PathLike | None = None) -> list[Location]:
    """Where ``resolve`` looks, in order, with the files present locally (weights folder, Hub cache)."""
    local = paths.weights_dir(weights_dir) / entry.weights.file
    found = [Location("weights folder", str(local), local if local.is_file() else None, not_a_file(local))]
    hub = [("converted Hub repo", entry.weights.hub_repo, entry.weights.file)] if entry.weights.hub_repo else []
    for what, repo, file in hub + [("Meta checkpoint", entry.source.repo, entry.source.file)]:
        cached = try_to_load_from_cache(repo, file)
        found.append(Location(what, f"{repo}/{file} (Hugging Face Hub)", Path(cached) if isinstance(cached, str) else None))
    return found


def _convert(entry: Entry, source: Path, folder: Path, force: bool = False, text: bool = False) -> Path:
    file = text_weights_file(entry) if text else entry.weights.file
    log.info(f"converting Meta's checkpoint {source} into {folder / file} (once; it is cached there)")
    blob = Path(os.path.realpath(source)).name  # a Hub cache blob of an LFS file is named by its sha256
    known = blob if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob) else None
    try:
        result = (convert_text_checkpoint if text else convert_checkpoint)(entry, source, folder, force=force, source_sha256=known)
    except FileExistsError:  # another process converted it meanwhile; it is verified like any file
        return folder / file
    except OutputError as e:
        raise OutputError(
            f"{e}. The zoo converts Meta's checkpoint into its weights folder once; choose a writable one: "
            "set ZOO_HOME=DIR (weights go to DIR/weights), or pass weights_dir=DIR (--weights-dir DIR on the command line)",
            e.folder,
        ) from None
    return result.path


def resolve(entry: Entry, weights_dir: str | os.PathLike | None = None, progress: bool = True, text: bool = False) -> Path:
    """A verified local weights file (sha256 and metadata) for ``entry``: from the weights folder, the
    converted Hub repo, or Meta's checkpoint converted on the spot. Raises ``WeightsNotFoundError``
    saying where it looked. ``text=True``: the CLIP text file of a PE-Core entry, found the same way."""
    folder = paths.weights_dir(weights_dir)
    file = text_weights_file(entry) if text else entry.weights.file
    local = folder / file
    rebuild = converter_command(entry, folder, text)
    problem = not_a_file(local)
    if problem:
        raise WeightsNotFoundError(f"{local} {problem}: remove it (or point it at the weights file), then load again")
    if local.is_file():
        try:
            check(local, entry, rebuild, text)
        except WeightsIntegrityError as e:
            source = try_to_load_from_cache(entry.source.repo, entry.source.file)
            if not isinstance(source, str):
                raise
            warnings.warn(f"{e}\nRebuilding it now from Meta's checkpoint in the Hub cache.", stacklevel=3)
            local = _convert(entry, Path(source), folder, force=True, text=text)
            check(local, entry, rebuild, text)
        return local
    looked = [f"{local} (the weights folder)"]
    if entry.weights.hub_repo:
        try:
            hub_file = hub_download(entry.weights.hub_repo, file, progress=progress)
        except (OSError, EntryNotFoundError, ValueError) as e:
            looked.append(f"{file} in the Hub repo {entry.weights.hub_repo} ({type(e).__name__})")
        else:
            try:
                check(hub_file, entry, rebuild, text)
            except WeightsIntegrityError as e:  # a bad copy in the Hub cache is served again until it is deleted
                raise WeightsIntegrityError(f"{e}; or {refetch_hint(hub_file)}") from None
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


__all__ = ["Location", "converter_command", "locate", "read_tensors", "resolve"]
