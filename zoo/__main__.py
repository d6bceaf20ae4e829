"""Command line: python -m zoo ..."""

from __future__ import annotations

import argparse
import sys

from zoo.registry import get_entry, list_pretrained_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description="pe-zoo: Meta's Perception Encoder models")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the checkpoints the zoo serves")
    p_list.add_argument("pattern", nargs="?", help="fnmatch filter, e.g. '*pe-core'")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in list_pretrained_models(args.pattern):
            e = get_entry(name)
            print(f"{name:48s} {e.source.repo:28s} {e.config.image_size}px  width {e.config.width}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
