"""Write (or check) the Hub model card of every registry entry: python -m converters.cards [--out DIR] [--check]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.cards import render_card
from zoo.fileio import atomic_write
from zoo.registry import list_pretrained_models

CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
COMMAND = "python -m converters.cards"


def write_cards(out_dir: Path) -> list[Path]:
    """Render every card into ``out_dir/<name>.md`` (each written atomically); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in list_pretrained_models():
        path = out_dir / f"{name}.md"
        atomic_write(path, render_card(name))
        paths.append(path)
    return paths


def stale_cards(cards_dir: Path) -> tuple[list[str], list[str]]:
    """Cards in ``cards_dir`` that are missing or differ from a fresh render, and cards of no registry entry."""
    names = list_pretrained_models()
    stale = [f"{n}.md" for n in names if not (cards_dir / f"{n}.md").is_file()
             or (cards_dir / f"{n}.md").read_text(encoding="utf-8") != render_card(n)]
    orphans = sorted(p.name for p in cards_dir.glob("*.md") if p.stem not in names)
    return stale, orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Generate model_cards/<name>.md from registry.yaml")
    parser.add_argument("--out", type=Path, default=CARDS_DIR, help=f"folder for the cards (default {CARDS_DIR})")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if any card in --out is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale, orphans = stale_cards(args.out)
        if stale:
            print(f"error: {len(stale)} model card(s) out of date in {args.out}: {', '.join(stale)}; "
                  f"regenerate them with `{COMMAND}`", file=sys.stderr)
        if orphans:
            print(f"error: card(s) in {args.out} with no registry entry: {', '.join(orphans)}; delete them",
                  file=sys.stderr)
        if stale or orphans:
            return 1
        print(f"all {len(list_pretrained_models())} model cards in {args.out} are up to date")
        return 0
    paths = write_cards(args.out)
    print(f"wrote {len(paths)} model cards to {args.out}")
    return 0


__all__ = ["CARDS_DIR", "COMMAND", "main", "stale_cards", "write_cards"]


if __name__ == "__main__":
    sys.exit(main())
