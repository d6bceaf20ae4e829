"""What the commands share: the compute options of a net, and loading one from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.fileio import DTYPES
WEIGHTS_DIR_HELP = "weights folder (default: $ZOO_HOME/weights or ~/.cache/pe-zoo/weights)"


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


__all__ = ["DTYPES", "WEIGHTS_DIR_HELP", "add_device", "add_weights_dir", "load_net"]
