"""What the commands share: the compute options of a net, and loading one from them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from zoo.fileio import DTYPES
WEIGHTS_DIR_HELP = "weights folder (default: $ZOO_HOME/weights or ~/.cache/pe-zoo/weights)"


def examples(*lines: str) -> dict[str, object]:
    """``add_parser`` keywords that end a command's ``--help`` with these example command lines."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def default_workers() -> int:
    """The commands' default number of image-decoding processes: the CPU count, at most 8."""
    return min(8, os.cpu_count() or 1)


def add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                   help=f"image decoding processes (default: the CPU count, at most 8: {default_workers()} here; 0: in process)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")


def add_weights_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", type=Path, help=WEIGHTS_DIR_HELP)


def load_net(args: argparse.Namespace):
    """``load_pretrained_model`` in inference mode from the command's ``name``, ``dtype``, ``device``, ``size``
    and ``weights_dir`` options."""
    from zoo.loader import load_pretrained_model

    return load_pretrained_model(
        args.name, inference=True, dtype=DTYPES[args.dtype], device=args.device,
        new_size=getattr(args, "size", None), weights_dir=args.weights_dir,
    )


__all__ = ["DTYPES", "WEIGHTS_DIR_HELP", "add_device", "add_weights_dir", "add_workers", "default_workers", "examples", "load_net"]
