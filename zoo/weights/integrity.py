"""Is a weights file the right one? sha256 (with a sidecar record so unchanged files are not re-hashed)
and the zoo metadata every converted file carries."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from zoo.nets.pe_vit import PEConfig, PEViT
from zoo.nets.text import PEText
from zoo.fileio import DTYPES, SAFETENSORS_CODES, file_sha256, file_stamp, read_sidecar, sidecar_path
from zoo.fileio import write_sidecar as record
from zoo.registry import Entry
from zoo.weights.errors import ConversionError, WeightsIntegrityError

FLOAT_CODES = {SAFETENSORS_CODES[d]: name for name, d in DTYPES.items()}  # the dtypes a zoo weights file may hold


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a zoo safetensors file (empty if it has none)."""
    try:
        with safe_open(Path(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors' own error type, or OSError
        raise ConversionError(f"cannot read the metadata of {path}: not a readable safetensors file ({e})") from None


def _hash(path: str | os.PathLike, expected: str | None, rebuild: str) -> tuple[str, bool]:
    """The file's sha256 checked against ``expected`` or its record, and whether it should be recorded now."""
    rec = read_sidecar(path)
    if rec is not None and {k: rec.get(k) for k in ("size", "mtime_ns", "ctime_ns", "inode")} == file_stamp(os.stat(path)):
        sha, fresh = rec["sha256"], False
    else:
        sha, fresh = file_sha256(path), True
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
    return sha, fresh


def _record_quietly(path: str | os.PathLike, sha256: str) -> None:
    try:
        record(path, sha256)
    except OSError:  # a read-only folder: no record, so the file is hashed on every load
        pass


def verify(path: str | os.PathLike, expected: str | None, rebuild: str) -> str:
    """Check ``path`` against ``expected`` (the registry's sha256) or its recorded sha256; return the hash.

    The full hash runs only when the file is new to the zoo or its size/mtime/ctime/inode changed; a
    new hash is recorded. A mismatch raises ``WeightsIntegrityError`` naming both hashes and the
    ``rebuild`` command. ``check`` verifies a weights file completely and records it only then.
    """
    sha, fresh = _hash(path, expected, rebuild)
    if fresh:
        _record_quietly(path, sha)
    return sha


def _summary(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def tensor_problems(path: str | os.PathLike, want: dict[str, torch.Size]) -> list[str]:
    """What is wrong with the tensors of a zoo weights file: missing, unexpected, mis-shaped, or not all of one
    float dtype (each list cut to its first few names and a count). Only the header is read."""
    with safe_open(Path(path), framework="pt") as f:
        got = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    problems = []
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_summary(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_summary(unexpected)}")
    shapes = [f"{k} {list(got[k][0])} (expected {list(want[k])})" for k in sorted(set(got) & set(want)) if got[k][0] != tuple(want[k])]
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) of the wrong shape: {_summary(shapes)}")
    dtypes = sorted({d for _, d in got.values()})
    if any(d not in FLOAT_CODES for d in dtypes) or len(dtypes) > 1:
        problems.append(f"tensors of dtype(s) {dtypes} (a zoo file holds one of {sorted(FLOAT_CODES.values())})")
    return problems


def expected_tensors(entry: Entry, text: bool = False) -> dict[str, torch.Size]:
    """Every tensor of an entry's vision (or ``text=True``: text) weights file, with its shape."""
    with torch.device("meta"):
        net = PEText(entry.text, entry.config.clip_dim) if text else PEViT(entry.config)
    want = {k: v.shape for k, v in net.state_dict().items()}
    if text:
        want["logit_scale"] = torch.Size([])
    return want


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
    """Verify a weights file for ``entry``: its sha256, its metadata (``check_metadata``) and its tensors'
    names, shapes and dtype (header only). A file new to the zoo is recorded only once it passed every check.

    ``text=True``: the entry's CLIP text file, whose metadata must also carry the registry's text config.
    """
    sha, fresh = _hash(path, None if text else entry.weights.sha256, rebuild)
    meta = check_metadata(path, entry, rebuild)
    if text and entry.text is not None and json.loads(meta.get("text_config", "null")) != dataclasses.asdict(entry.text):
        raise WeightsIntegrityError(
            f"{path} cannot be loaded as the text tower of {entry.name}: its metadata text_config "
            f"{meta.get('text_config')} is not the registry's {dataclasses.asdict(entry.text)}. Rebuild it: {rebuild} --force"
        )
    problems = tensor_problems(path, expected_tensors(entry, text and entry.text is not None))
    if problems:
        raise WeightsIntegrityError(
            f"{path} does not hold the {'text ' if text else ''}tensors of {entry.name}: " + "; ".join(problems)
            + f". Rebuild it: {rebuild} --force"
        )
    if fresh:
        _record_quietly(path, sha)


__all__ = [
    "check", "check_metadata", "expected_tensors", "file_sha256", "read_metadata", "record", "sidecar_path", "tensor_problems", "verify",
]
