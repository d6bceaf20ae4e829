"""``pe-zoo birder SCRIPT [ARGS...]``: birder's scripts and tools on zoo nets (as ``python -m zoo.birder``)."""

from __future__ import annotations

import argparse
import sys


def run_birder(argv: list[str]) -> int:
    """``argv`` after ``birder``, handed to birder untouched (its own options, ``--help`` included)."""
    try:
        from zoo.birder.scripts import USAGE, run
    except ImportError as e:
        raise OSError(str(e)) from None  # the one-line hint naming the [birder] extra
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    return run(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo.birder``: one-line errors (exit 2) for an unknown script, as the zoo's other commands."""
    try:
        return run_birder(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


def cmd_birder(args: argparse.Namespace) -> int:
    return run_birder([args.script, *args.args] if args.script else [])


def register(sub: argparse._SubParsersAction) -> None:
    helptext = "run birder's own scripts and tools (train, predict, ...) on the zoo's networks"
    p = sub.add_parser(
        "birder", help=helptext, description=helptext + " (python -m zoo.birder --help lists them)",
        epilog="examples:\n  pe-zoo birder --help\n"
        "  pe-zoo birder train --network rope_i_vit_t16_pn_aps_c1_pe-core --pretrained --reset-head --data-path data/training\n"
        "  pe-zoo birder tools model-info --network rope_i_vit_t16_pn_aps_c1_pe-core",
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False,
    )
    p.add_argument("script", nargs="?", help="a birder script (train, predict, ...) or 'tools'")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    p.set_defaults(func=cmd_birder)


__all__ = ["main", "register", "run_birder"]
