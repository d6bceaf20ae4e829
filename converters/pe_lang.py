"""python -m converters.pe_lang --variant V: convert Meta's PE-Lang checkpoint into the zoo's safetensors."""

from __future__ import annotations

import sys

from converters.cli import run


def main(argv: list[str] | None = None) -> int:
    return run("lang", argv)


__all__ = ["main"]


if __name__ == "__main__":
    sys.exit(main())
