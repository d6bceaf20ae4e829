"""python -m converters.pe_core --variant V: convert Meta's PE-Core checkpoint into the zoo's safetensors."""

from __future__ import annotations

import sys

from converters.cli import run


def main(argv: list[str] | None = None) -> int:
    return run("core", argv)


__all__ = ["main"]


if __name__ == "__main__":
    sys.exit(main())
