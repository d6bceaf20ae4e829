"""Fine-tune a PE net for image classification on an image folder: full fine-tuning or a linear probe.

``finetune(FinetuneArgs(...))`` reads an ImageFolder tree (one sub-folder per class, split into train and
validation by ``val_fraction``) or ``DIR/train`` + ``DIR/val`` (or ``validation``, ``valid``, ``test``), trains,
evaluates top-1 after each epoch, and writes the best epoch's net as one self-describing safetensors file
(``zoo.weights.finetuned``) plus ``metrics.json``. ``zoo.load_pretrained_model(path)`` loads that file back.
Hidden entries are ignored; unreadable images are skipped and listed in ``metrics.json``.

- Full fine-tuning: random resized crop and flip at the input size, Meta's normalisation; AdamW over
  ``zoo.param_groups`` (layer-wise lr decay, no weight decay on norms, biases and embeddings), linear warmup
  then cosine decay, stochastic depth, optional gradient checkpointing and bfloat16 autocast.
- Linear probe: the backbone is frozen, every image is embedded once with the model's own preprocessing
  (cached), then only the head trains on the cached embeddings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from zoo import weights
from zoo.collection.inputs import is_image_name
from zoo.fileio import DTYPES as ALL_DTYPES
from zoo.fileio import atomic_write_json
from zoo.images import ImageError, open_image
from zoo.loader import ModelInfo, load_pretrained_model
from zoo.nets.pe_vit import PEViT
from zoo.registry import get_entry
from zoo.transforms import to_rgb
from zoo.weights.writer import remove_stale_partials

log = logging.getLogger("zoo")
DTYPES = {k: ALL_DTYPES[k] for k in ("float32", "bfloat16")}  # the training dtypes
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
DEFAULT_LR = {"probe": 1e-3, "full": 1e-4}
VAL_SPLITS = ("val", "validation", "valid", "test")  # DIR/train + the first of these that exists


@dataclass
class FinetuneArgs:
    """Everything a fine-tuning run needs (recorded in the output file's metadata)."""

    name: str  # registry name of the base model
    data: Path
    out: Path
    linear_probe: bool = False
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # default 1e-3 for the linear probe, 1e-4 for full fine-tuning
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.1
    warmup_epochs: float = 1.0
    grad_checkpointing: bool = False
    dtype: str = "float32"  # bfloat16: autocast for fine-tuning, bfloat16 weights for the probe's embeddings
    val_fraction: float = 0.2
    size: int | None = None  # input side (a multiple of the patch size); default: the model's native size
    seed: int = 0
    workers: int | None = None  # data loader processes; default: the CPU count, at most 8 (as embed)
    device: str | None = None
    weights_dir: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported for training; choose one of {sorted(DTYPES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be at least 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.workers is None:
            self.workers = min(8, os.cpu_count() or 1)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR["probe" if self.linear_probe else "full"]

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(data=str(self.data), out=str(self.out), weights_dir=self.weights_dir and str(self.weights_dir), lr=self.learning_rate)
        return d


@dataclass
class FinetuneResult:
    """What a run produced: the files, the per-epoch metrics and the best epoch's net."""

    path: Path
    metrics_path: Path
    metrics: dict[str, Any]
    net: PEViT
    info: ModelInfo
    class_to_idx: dict[str, int] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------------- data
def _folders(root: Path, exclude: Path | None = None) -> list[Path]:
    """The visible sub-folders of ``root`` (hidden ones such as ``.ipynb_checkpoints`` and ``exclude`` left out), by name."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise ValueError(f"--data {root} cannot be read as a folder: {e.strerror or e}") from None
    return [Path(e.path) for e in entries
            if e.is_dir() and not e.name.startswith(".") and (exclude is None or Path(e.path).resolve() != exclude)]


def _images(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if is_image_name(f) and not f.startswith(".")]
    return found


def _scan(root: Path, exclude: Path | None) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """(samples, class_to_idx) of one ImageFolder tree: one visible sub-folder of images per class."""
    classes = _folders(root, exclude)
    if not classes:
        raise ValueError(f"{root} has no class folders; give a folder with one sub-folder of images per class")
    empty = [c.name for c in classes if not _images(c)]
    if empty:
        raise ValueError(f"class folder(s) {empty} in {root} hold no images; add images or remove the folder(s)")
    class_to_idx = {c.name: i for i, c in enumerate(classes)}
    return [(p, i) for c, i in zip(classes, class_to_idx.values()) for p in _images(c)], class_to_idx


def _two_classes(classes: dict[str, int], root: Path) -> None:
    if len(classes) < 2:
        only = next(iter(classes))
        raise ValueError(
            f"{root} has one class ({only!r}); a classifier needs at least 2. If the class folders are inside "
            f"{root / only}, pass --data {root / only}"
        )


def find_images(data: Path, val_fraction: float, seed: int = 0, exclude: Path | None = None) -> tuple[list, list, dict[str, int]]:
    """(train samples, val samples, class_to_idx) with samples as (path, class index) pairs.

    ``data/train`` with ``data/val`` (or ``validation``, ``valid``, ``test``) are used as given, the
    validation labels mapped to the training classes; ``data/train`` alone is split as a tree. Otherwise
    ``data`` is one ImageFolder tree, split per class (seeded) so that about ``val_fraction`` of each
    class's images are held out. Hidden entries and the folder ``exclude`` are ignored.
    """
    data = Path(data)
    exclude = exclude.resolve() if exclude is not None else None
    top = {f.name.lower(): f for f in _folders(data, exclude)}
    splits = [top[n] for n in VAL_SPLITS if n in top]
    if "train" in top and splits:
        train_dir, val_dir = top["train"], splits[0]
        if len(splits) > 1:
            log.info("validating on %s; %s not used", val_dir, ", ".join(str(s) for s in splits[1:]))
        train, classes = _scan(train_dir, exclude)
        _two_classes(classes, train_dir)
        val, val_classes = _scan(val_dir, exclude)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(f"{val_dir} has classes that {train_dir} lacks: {unknown}")
        names = {i: c for c, i in val_classes.items()}
        return train, [(p, classes[names[i]]) for p, i in val], classes
    if "train" in top or splits:
        if set(top) != {"train"}:
            found = ", ".join(sorted(f.name for f in top.values()))
            raise ValueError(
                f"{data} holds {found}: give train/ with val/ (or validation/, valid/, test/) beside it, "
                "or one sub-folder of images per class"
            )
        data = top["train"]  # train/ alone: hold out val_fraction of it
    tree, classes = _scan(data, exclude)
    _two_classes(classes, data)
    rng = random.Random(seed)
    train, val = [], []
    for name, idx in classes.items():
        samples = [s for s in tree if s[1] == idx]
        rng.shuffle(samples)
        if len(samples) < 2:
            raise ValueError(f"class {name!r} in {data} has {len(samples)} image(s); it needs at least 2 to split off a validation image")
        n_val = min(len(samples) - 1, max(1, round(val_fraction * len(samples))))
        val += samples[:n_val]
        train += samples[n_val:]
    return train, val, classes


class ImageSamples(Dataset):
    """(path, label) pairs as (tensor, label, "") through a transform; an unreadable image as (None, label, reason)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        path, label = self.samples[i]
        try:
            return self.transform(open_image(path)), label, ""
        except ImageError as e:
            return None, label, str(e)


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """A batch of the readable images and their labels (None when there is none), and the reasons for the others."""
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [reason for x, _, reason in items if x is None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


def _loader(samples: list, transform, args: "FinetuneArgs", **kw: Any) -> DataLoader:
    return DataLoader(ImageSamples(samples, transform), batch_size=args.batch_size, num_workers=args.workers,
                      collate_fn=_collate, persistent_workers=args.workers > 0, **kw)


def _skipped(unreadable: set[str], reasons: list[str]) -> None:
    for r in reasons:
        if r not in unreadable:
            log.warning("skipped: %s", r)
            unreadable.add(r)


def train_transform(size: tuple[int, int], rgb_stats: dict[str, list[float]]) -> T.Compose:
    """Fine-tuning augmentation: random resized crop (25-100% of the area) and horizontal flip, then Meta's normalisation."""
    return T.Compose([
        to_rgb, T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(rgb_stats["mean"], rgb_stats["std"]),
    ])


# ---------------------------------------------------------------------------------------------- training
def _check_out(out: Path, force: bool) -> None:
    """Refuse an existing, non-empty ``out`` unless ``force``; files a killed run left half-written do not count."""
    if out.is_dir():
        for name in (WEIGHTS_FILE, METRICS_FILE):
            remove_stale_partials(out / name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"output folder {out} already exists and is not empty; choose another --out or pass --force to overwrite it")


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()


class _Progress:
    """An epoch's progress bar showing the running loss and images per second."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)
        self.start, self.seen, self.loss_sum = time.perf_counter(), 0, 0.0

    def update(self, n: int, loss: float) -> None:
        self.seen += n
        self.loss_sum += loss * n
        self.bar.update(n)
        self.bar.set_postfix(loss=f"{self.loss:.4f}", img_s=f"{self.seen / (time.perf_counter() - self.start):.1f}")

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    def close(self) -> float:
        self.bar.close()
        return self.seen / (time.perf_counter() - self.start)


@torch.no_grad()
def _top1(logits_fn, batches, unreadable: set[str]) -> float:
    correct = total = 0
    for x, y, bad in batches:
        _skipped(unreadable, bad)
        if x is not None:
            correct += (logits_fn(x).argmax(dim=-1).cpu() == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _embed(net: PEViT, loader: DataLoader, device: torch.device, desc: str, progress: bool,
           unreadable: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [torch.zeros(0, net.embed_dim)], [torch.zeros(0, dtype=torch.long)]
    with torch.inference_mode(), tqdm(total=len(loader.dataset), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for x, y, bad in loader:
            _skipped(unreadable, bad)
            if x is not None:
                feats.append(net.embedding(x.to(device)).float().cpu())
                labels.append(y)
            bar.update(len(bad) + (0 if y is None else len(y)))
    return torch.cat(feats), torch.cat(labels)


def _probe(args: FinetuneArgs, train: list, val: list, classes: dict[str, int], progress: bool, unreadable: set[str]):
    device = torch.device(args.device or "cpu")
    net, info = load_pretrained_model(args.name, inference=True, device=device, dtype=DTYPES[args.dtype],
                                      new_size=args.size, weights_dir=args.weights_dir)
    transform = info.transform()

    def embed(samples: list, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _embed(net, _loader(samples, transform, args), device, desc, progress, unreadable)

    started = time.perf_counter()
    xt, yt = embed(train, "embedding train")
    xv, yv = embed(val, "embedding val")
    log.info("embedded %d train and %d val images once in %.1f s", len(yt), len(yv), time.perf_counter() - started)
    head = nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.AdamW(head.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(yt) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    step, history, best = 0, [], None
    for epoch in range(1, args.epochs + 1):
        bar = _Progress(len(yt), f"epoch {epoch}/{args.epochs}", progress)
        for idx in torch.randperm(len(yt), generator=gen).split(args.batch_size):
            for g in opt.param_groups:
                g["lr"] = args.learning_rate * _lr_factor(step, total, warmup)
            loss = F.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(len(idx), loss.item())
            step += 1
        speed = bar.close()
        top1 = _top1(head, [(xv, yv, [])], unreadable)
        history.append(_epoch_log(epoch, args.epochs, bar.loss, top1, speed))
        if best is None or top1 > best[0]:
            best = (top1, epoch, {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    net.reset_classifier(len(classes))
    net.head.load_state_dict({k[len("head."):]: v for k, v in best[2].items()})
    net.head.requires_grad_(False)
    return net, info, best, history, "head"


def _finetune(args: FinetuneArgs, train: list, val: list, classes: dict[str, int], progress: bool, unreadable: set[str]):
    from zoo.training import param_groups

    device = torch.device(args.device or "cpu")
    torch.manual_seed(args.seed)
    net, info = load_pretrained_model(args.name, device=device, new_size=args.size, weights_dir=args.weights_dir,
                                      num_classes=len(classes), drop_path_rate=args.drop_path)
    net.set_grad_checkpointing(args.grad_checkpointing)
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = _loader(train, train_transform(info.size, info.rgb_stats), args, shuffle=True, generator=gen,
                           drop_last=len(train) > args.batch_size)
    val_loader = _loader(val, info.transform(), args)
    opt = torch.optim.AdamW(param_groups(net, args.learning_rate, args.weight_decay, args.layer_decay))
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    total = args.epochs * len(train_loader)
    warmup = round(args.warmup_epochs * len(train_loader))
    step, history, best = 0, [], None
    for epoch in range(1, args.epochs + 1):
        net.train()
        bar = _Progress(len(train_loader) * args.batch_size if train_loader.drop_last else len(train), f"epoch {epoch}/{args.epochs}", progress)
        for x, y, bad in train_loader:
            _skipped(unreadable, bad)
            if x is None:
                continue
            factor = _lr_factor(step, total, warmup)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * factor
            with _autocast(device, args.dtype):
                loss = F.cross_entropy(net(x.to(device)).float(), y.to(device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)  # gradients freed now, not held through the next forward
            bar.update(len(y), loss.item())
            step += 1
        speed = bar.close()
        net.eval()

        def logits(x: torch.Tensor) -> torch.Tensor:
            with _autocast(device, args.dtype):
                return net(x.to(device)).float()

        top1 = _top1(logits, val_loader, unreadable)
        history.append(_epoch_log(epoch, args.epochs, bar.loss, top1, speed))
        if best is None or top1 > best[0]:
            best = (top1, epoch, {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()})
    net.load_state_dict(best[2])
    net.eval().requires_grad_(False)
    return net, info, best, history, "full"


def _epoch_log(epoch: int, epochs: int, loss: float, top1: float, speed: float) -> dict[str, float]:
    log.info("epoch %d/%d: train_loss %.4f, val_top1 %.2f%%, %.1f img/s", epoch, epochs, loss, 100 * top1, speed)
    return {"epoch": epoch, "train_loss": loss, "val_top1": top1, "train_img_per_s": speed}


def finetune(args: FinetuneArgs, progress: bool = True) -> FinetuneResult:
    """Train as ``args`` says and write ``model.safetensors`` and ``metrics.json`` into ``args.out``."""
    get_entry(args.name)  # every input checked before any work; nothing is created before the results are written
    _check_out(args.out, args.force)
    train, val, classes = find_images(args.data, args.val_fraction, args.seed, exclude=args.out)
    log.info("%d classes, %d train and %d val images from %s", len(classes), len(train), len(val), args.data)
    run = _probe if args.linear_probe else _finetune
    unreadable: set[str] = set()
    net, info, (top1, best_epoch, tensors), history, kind = run(args, train, val, classes, progress, unreadable)
    base_sha = weights.verify(info.weights, None, rebuild=weights.converter_command(get_entry(info.name)))
    record = {
        "base": info.name, "base_sha256": base_sha, "class_to_idx": classes, "size": list(info.size),
        "tensors": kind, "best_epoch": best_epoch, "val_top1": top1, "args": args.record(),
    }
    path = args.out / WEIGHTS_FILE
    weights.write_finetuned(path, tensors, record)
    metrics = {"epochs": history, "best_epoch": best_epoch, "best_val_top1": top1, "train_images": len(train),
               "val_images": len(val), "class_to_idx": classes, "unreadable": sorted(unreadable)}
    atomic_write_json(args.out / METRICS_FILE, metrics)
    log.info("best epoch %d (val_top1 %.2f%%) written to %s", best_epoch, 100 * top1, path)
    if unreadable:
        log.warning("%d unreadable image(s) skipped; listed in %s", len(unreadable), args.out / METRICS_FILE)
    return FinetuneResult(path, args.out / METRICS_FILE, metrics, net, info.with_classes(classes, path), classes)


__all__ = ["FinetuneArgs", "FinetuneResult", "find_images", "finetune", "train_transform"]
