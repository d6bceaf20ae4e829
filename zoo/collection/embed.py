"""Embed a collection of images into a sharded, resumable output folder, in one process or many (torchrun).

Shard ``s`` holds the readable images among inputs ``[s * shard_size, (s + 1) * shard_size)``; under
``torch.distributed`` rank ``r`` of ``w`` writes the shards ``s`` with ``s % w == r``, and rank 0 writes the
manifest once every shard is there. A restart with the same inputs and options redoes only missing shards.
``append=True`` adds the inputs a finished collection does not hold yet as new shards, numbered on from
its last; ``append.json`` records the plan until the manifest takes the new shards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from zoo import weights
from zoo.collection.inputs import expand_inputs
from zoo.collection.read import read_manifest, shard_paths
from zoo.collection.media import embed_media_shards, video_settings
from zoo.collection.store import (
    APPEND, FORMAT, MANIFEST, SETTINGS, CollectionError, read_json, remove_temporaries, shard_done, stale_temporaries,
    write_json, write_manifest, write_shard,
)
from zoo.inference import open_image
from zoo.loader import load_entry
from zoo.registry import get_entry
from zoo.transforms import classification_transform
from zoo.version import __version__
from zoo.video import DEFAULT_FRAMES

log = logging.getLogger("zoo")

What = Literal["embedding", "clip"]
STORE_DTYPES = ("float16", "float32")
OPTIMIZE_MIN_IMAGES = 32  # from this many images on, zoo.optimize repays a compile (where it compiles)
IDENTITY = ("format", "model", "weights_sha256", "what", "normalize", "dtype", "size", "dim", "store_dtype",
            "shard_size", "num_inputs", "inputs_sha256", "video")
INPUT_KEYS = ("num_inputs", "inputs_sha256")  # what an --append may change
DIST_TIMEOUT = timedelta(hours=2)  # ranks wait at most about one shard's work for each other


@dataclass(frozen=True)
class EmbedResult:
    """What ``embed_collection`` did: the folder, its totals, and how many shards this process wrote."""

    out: Path
    rows: int
    errors: int
    shards: int
    written: int
    seconds: float


class ImageFiles(Dataset):
    """``(index, tensor or None, reason or None)`` per path: an unreadable image becomes a reason, never an exception."""

    def __init__(self, paths: Sequence[str], transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        if os.path.exists(self.paths[i]) and not os.path.isfile(self.paths[i]):  # a FIFO would block open() forever
            return i, None, "not a regular file (a folder, FIFO, socket or device)"
        try:
            return i, self.transform(open_image(self.paths[i])), None
        except Exception as e:  # noqa: BLE001 -- any decode failure (OSError, ValueError, PIL's bomb and syntax errors)
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    good = [(i, x) for i, x, _ in items if x is not None]
    x = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], x, [(i, reason) for i, x_, reason in items if x_ is None]


def _inputs_sha256(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _distributed(device: str) -> tuple[int, int, bool]:
    """``(rank, world_size, initialized_here)``: joins the torchrun group (NCCL on CUDA, gloo on CPU) when there is one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, timeout=DIST_TIMEOUT)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), True


def _barrier(world: int, device: torch.device) -> None:
    if world > 1:
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[device.index or 0])
        else:
            torch.distributed.barrier()


def _device(device: str | None) -> torch.device:
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and dev.index is None:  # torchrun: one GPU per local rank
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _differences(found: dict[str, Any], asked: dict[str, Any], keys: Sequence[str] = IDENTITY) -> list[str]:
    return [f"{k} {found.get(k)!r} there, {asked[k]!r} asked" for k in keys if k in asked and found.get(k) != asked[k]]


def _only_stale_settings(out: Path) -> bool:
    """Whether ``out`` holds nothing but what a run killed while writing its settings left: their temporaries."""
    entries = list(out.iterdir())
    stale = set(stale_temporaries(out))
    return bool(entries) and all(e in stale and e.name.startswith(f".{SETTINGS}.") for e in entries)


def _prepare(out: Path, settings: dict[str, Any], append: bool) -> None:
    """Rank 0, before any shard: create the folder and its settings, or (in this collection only) clear a
    stopped run's temporaries. A folder that is not this collection is refused before anything is touched."""
    if (out / SETTINGS).exists():
        _check(out, settings, append)
        remove_temporaries(out)
    elif not append and (not out.exists() or (out.is_dir() and (not any(out.iterdir()) or _only_stale_settings(out)))):
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        write_json(out / SETTINGS, settings)


def _check(out: Path, settings: dict[str, Any], append: bool = False) -> None:
    """Every rank: refuse an output folder that is not this collection (with ``append``: not a finished
    collection of the same model and options)."""
    if not out.is_dir():
        raise CollectionError(f"--out {out} {'exists and is not a folder' if out.exists() else 'does not exist'}; "
                              + ("--append adds to a finished collection" if append else "choose a new folder for the collection"))
    try:
        found = read_json(out / SETTINGS)
    except (OSError, ValueError):
        raise CollectionError(
            f"--out {out} {'is not empty and ' if not append else ''}holds no pe-zoo collection ({SETTINGS} missing or "
            "unreadable); " + ("--append adds to a finished collection" if append else "choose a new or empty folder")
        ) from None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise CollectionError(f"--out {out} holds a {SETTINGS} that is not a pe-zoo collection's; choose a new or empty folder")
    if append:
        diff = _differences(found, settings, [k for k in IDENTITY if k not in INPUT_KEYS])
        if diff:
            raise CollectionError(f"--append: {out} was embedded with other settings ({'; '.join(diff)}): append with "
                                  "the same model and options, or embed into a new --out folder")
        if not (out / MANIFEST).exists():
            raise CollectionError(f"--append: {out} is unfinished; run the command that made it again to finish it, "
                                  "then append")
        return
    diff = _differences(found, settings)
    if diff:
        more = " (to add new images to a finished collection, pass --append)" if all(
            d.split()[0] in INPUT_KEYS for d in diff) and (out / MANIFEST).exists() else ""
        raise CollectionError(
            f"--out {out} holds a collection embedded with other settings ({'; '.join(diff)}): "
            f"resume it with the same inputs and options, or choose a new --out folder{more}"
        )


def _present(out: Path, manifest: dict[str, Any]) -> set[str]:
    """The resolved paths of every input a finished collection holds: its rows and its unreadable images."""
    present = set()
    for s, shard in enumerate(manifest["shards"]):
        present.update(os.path.realpath(p) for p in shard_paths(out, manifest, s))
        errors = read_json(out / shard["paths"]).get("errors", [])  # a whole shard: shard_paths read it
        present.update(os.path.realpath(e[0]) for e in errors if isinstance(e, list) and e and isinstance(e[0], str))
    return present


def _plan_append(out: Path, paths: list[str], rank: int, world: int, dev: torch.device) -> tuple[list[str], int, dict | None]:
    """``(new inputs, first new shard, plan)`` of an append: rank 0 records the plan in ``append.json`` (or
    finds the same plan there, from an interrupted append) before any rank writes a shard."""
    manifest = read_manifest(out)
    present = _present(out, manifest)
    new = [p for p in paths if os.path.realpath(p) not in present]
    base = len(manifest["shards"])
    plan = {"first_shard": base, "num_inputs": len(new), "inputs_sha256": _inputs_sha256(new)}
    try:
        pending = read_json(out / APPEND)
    except (OSError, ValueError):
        pending = None
    if pending is not None and pending != plan and pending not in manifest.get("appends", []):  # every rank alike
        raise CollectionError(
            f"--append: an interrupted append of other inputs is pending in {out} ({APPEND}): run that command "
            f"again to finish it first, or delete {out / APPEND} to drop it"
        )
    if rank == 0:
        if pending != plan:
            (out / APPEND).unlink(missing_ok=True)  # none, or one the manifest already took
            if new:  # shards past the manifest's are no append's (not this plan's): never take them as done
                for f in out.glob("shard-*"):
                    if f.stem[6:].isdigit() and int(f.stem[6:]) >= base:
                        f.unlink()
                write_json(out / APPEND, plan)
    _barrier(world, dev)
    return new, base, plan if new else None


def embed_collection(
    name: str,
    inputs: Sequence[str],
    out: str | os.PathLike,
    *,
    what: What = "embedding",
    normalize: bool = False,
    store_dtype: str = "float16",
    shard_size: int = 10_000,
    batch_size: int = 32,
    workers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    size: int | None = None,
    weights_dir: str | os.PathLike | None = None,
    optimize: bool | None = None,
    progress: bool = True,
    append: bool = False,
    frames: int = DEFAULT_FRAMES,
    segment_seconds: float | None = None,
    normalize_frames: bool = False,
    gpu_decode: bool | None = None,
) -> EmbedResult:
    """Embed the images of ``inputs`` (files, folders, globs, ``@list.txt``) with registry model ``name`` into ``out``.

    ``what``: the pooled ``embedding`` [W] or ``clip`` (projected into CLIP space, PE-Core only);
    ``normalize``: unit-length rows; ``store_dtype``: ``float16`` or ``float32`` on disk. Images are decoded
    and preprocessed (the model's own transform) by ``workers`` DataLoader processes (default: up to 8).
    Unreadable images are skipped and listed in ``errors.txt``. Resumable: the same call after a stop
    redoes only missing shards; other settings on an existing ``out`` raise ``CollectionError``.
    ``append``: add to the finished collection in ``out`` the inputs it does not hold yet (by resolved path)
    as new shards, with the same model and options (else ``CollectionError``); the manifest takes them at
    once, when all are written; an interrupted append resumes like an interrupted embed.
    Under torchrun every rank calls this; each writes its share of the shards.

    Videos (``zoo.video``) give one row each, or one per ``segment_seconds`` window: the mean of the
    embeddings of ``frames`` frames sampled as in Meta's evaluation (of unit vectors with ``normalize_frames``).
    ``gpu_decode`` (default: on when ``device`` is CUDA): JPEGs decoded and resized on the device. Without it,
    a CUDA device still takes the workers' 8-bit pixels and scales and normalises them itself (the same inputs).
    """
    start = time.perf_counter()
    if what not in ("embedding", "clip"):
        raise ValueError(f"unknown --what {what!r}; choose 'embedding' or 'clip'")
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"unknown store dtype {store_dtype!r}; choose one of {', '.join(STORE_DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be at least 1")
    out = Path(out)
    paths = expand_inputs(inputs)
    video = video_settings(paths, frames, segment_seconds, normalize_frames)
    entry = get_entry(name)
    if what == "clip" and not entry.config.clip_dim:
        raise ValueError(f"--what clip needs a PE-Core model (the CLIP projection); {entry.name} has none: use --what embedding")
    known = {"format": FORMAT, "model": entry.name, "what": what, "normalize": normalize,
             "dtype": str(dtype).removeprefix("torch."), "store_dtype": store_dtype, "shard_size": shard_size,
             "num_inputs": len(paths), "inputs_sha256": _inputs_sha256(paths)}
    if video:
        known["video"] = video
    if append or (out / SETTINGS).exists():
        _check(out, known, append)  # what can be told before the weights load (the rest after)
    dev = _device(device)
    rank, world, own_group = _distributed(str(dev))
    try:
        net, info = load_entry(entry, inference=True, dtype=dtype, device=dev, new_size=size,
                               weights_dir=weights_dir, progress_bar=progress and rank == 0)
        sha = weights.verify(info.weights, entry.weights.sha256, weights.converter_command(entry))
        settings = {**known, "weights_sha256": sha, "size": list(info.size),
                    "dim": entry.config.clip_dim if what == "clip" else entry.config.width}
        settings = {k: settings[k] for k in IDENTITY if k in settings}  # settings.json in its usual key order
        if rank == 0:
            _prepare(out, settings, append)
        _barrier(world, dev)
        _check(out, settings, append)
        base, plan = 0, None
        if append:
            paths, base, plan = _plan_append(out, paths, rank, world, dev)
            if not paths:
                manifest = read_manifest(out)
                log.info(f"{out} already holds every input: nothing to append ({manifest['rows']} rows)")
                return EmbedResult(out, manifest["rows"], manifest["errors"], len(manifest["shards"]), 0,
                                   time.perf_counter() - start)
        elif (out / MANIFEST).exists():
            manifest = read_manifest(out)
            log.info(f"{out} is complete: {manifest['rows']} rows, {manifest['errors']} unreadable images")
            return EmbedResult(out, manifest["rows"], manifest["errors"], len(manifest["shards"]), 0,
                               time.perf_counter() - start)
        num_shards = base + -(-len(paths) // shard_size)
        mine = [s for s in range(base + rank, num_shards, world) if not shard_done(out, s, settings["dim"], store_dtype)]
        if rank == 0:
            log.info(f"{'appending' if append else 'embedding'} {len(paths)} images with {entry.name} into {out}: "
                     f"{num_shards - base} {'new ' if append else ''}shards"
                     + (f" over {world} processes" if world > 1 else "")
                     + f", {len(mine)} to write here")
        method = "clip_embedding" if what == "clip" else "embedding"
        if optimize if optimize is not None else len(paths) >= OPTIMIZE_MIN_IMAGES:
            from zoo.optimize import optimize as zoo_optimize

            run = zoo_optimize(net, method=method)
        else:
            run = torch.inference_mode()(getattr(net, method))
        transform = classification_transform(info.size, info.rgb_stats)
        on_device = dev.type == "cuda" if gpu_decode is None else gpu_decode
        if video or on_device or dev.type == "cuda":
            embed_media_shards(run, paths, mine, out, base, shard_size, batch_size, workers, transform, dev, dtype,
                               normalize, settings["dim"], store_dtype, progress and rank == 0, video,
                               info.size, info.rgb_stats, device_decode=on_device)
        else:
            _embed_shards(run, paths, mine, out, base, shard_size, batch_size, workers, transform, dev, dtype, normalize,
                          settings["dim"], store_dtype, progress and rank == 0)
        _barrier(world, dev)
        if rank == 0:
            missing = [s for s in range(base, num_shards) if not shard_done(out, s, settings["dim"], store_dtype)]
            if missing:
                raise CollectionError(f"shards {missing[:5]} of {out} are missing after the run; run the same command again")
            if append:
                old = read_manifest(out)
                record = {k: v for k, v in old.items() if k not in ("rows", "errors", "shards")}
                record["appends"] = [*old.get("appends", []), plan]
            else:
                record = settings
            manifest = write_manifest(out, {**record, "zoo_version": __version__}, num_shards)
            (out / APPEND).unlink(missing_ok=True)
            log.info(f"wrote {out / MANIFEST}: {manifest['rows']} rows, {manifest['errors']} unreadable images"
                     + (f" (see {out / 'errors.txt'})" if manifest["errors"] else ""))
        _barrier(world, dev)
        manifest = read_manifest(out)
        return EmbedResult(out, manifest["rows"], manifest["errors"], num_shards, len(mine), time.perf_counter() - start)
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _embed_shards(run, paths, shards, out, base, shard_size, batch_size, workers, transform, dev, dtype, normalize,
                  dim, store_dtype, progress) -> None:
    """Embed and write ``shards`` (indices; shard ``base`` holds ``paths[:shard_size]``), each batch within one
    shard, in input order."""
    from tqdm.auto import tqdm

    batches, owners = [], []
    for s in shards:
        idx = list(range((s - base) * shard_size, min((s - base + 1) * shard_size, len(paths))))
        for b in range(0, len(idx), batch_size):
            batches.append(idx[b:b + batch_size])
            owners.append(s)
    if not batches:
        return
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(ImageFiles(paths, transform), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                        pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None)
    left = {s: owners.count(s) for s in shards}
    start, done = time.perf_counter(), 0
    rows: list[np.ndarray] = []
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    with tqdm(total=sum(map(len, batches)), unit="img", disable=not progress, desc="embed", smoothing=0.1) as bar:
        for (idx, x, errors), s in zip(loader, owners):
            if x is not None:
                with torch.inference_mode():
                    y = run(x.to(dev, dtype, non_blocking=True)).float()
                    if normalize:
                        y = F.normalize(y, dim=-1)
                rows.append(y.to(getattr(torch, store_dtype)).cpu().numpy())
                good.extend(paths[i] for i in idx)
            bad.extend((paths[i], reason) for i, reason in errors)
            bar.update(len(idx) + len(errors))
            done += len(idx) + len(errors)
            left[s] -= 1
            if left[s] == 0:
                stacked = np.concatenate(rows) if rows else np.zeros((0, dim), store_dtype)
                write_shard(out, s, stacked, good, bad)
                rows, good, bad = [], [], []
    seconds = time.perf_counter() - start
    log.info(f"embedded {done} images in {seconds:.1f} s ({done / seconds:.2f} img/s)")


__all__ = ["EmbedResult", "ImageFiles", "OPTIMIZE_MIN_IMAGES", "embed_collection"]
