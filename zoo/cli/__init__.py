"""Command line: ``python -m zoo`` (or ``pe-zoo``) with one sub-command per job.

Each module listed in ``COMMANDS`` adds its sub-commands through ``register(sub)``. The CLI decides what
the library's ``zoo`` logger shows (info by default, warnings only with ``--quiet``) and turns the
errors a user can fix into one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from zoo.export import ExportError
from zoo.registry import RegistryError, UnknownModelError
from zoo.version import __version__
from zoo.weights import ConversionError, WeightsIntegrityError, WeightsNotFoundError
from zoo.weights.writer import exit_on_sigterm

COMMANDS = (
    "zoo.cli.basic", "zoo.cli.collection", "zoo.cli.index", "zoo.cli.finetune", "zoo.cli.export", "zoo.cli.eval",
    "zoo.cli.show", "zoo.cli.birder",
)
USER_ERRORS = (
    UnknownModelError, RegistryError, WeightsNotFoundError, WeightsIntegrityError, ConversionError, ExportError, ValueError, OSError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo", description="pe-zoo: Meta's Perception Encoder models")
    parser.add_argument("--version", action="version", version=f"pe-zoo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="show only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    for command in sub.choices.values():  # --quiet also after the command: python -m zoo info NAME --quiet
        if "--quiet" not in command._option_string_actions:
            command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                 help="show only warnings and errors")
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a message is logged, so it never outlives a replaced stream
    (``main`` called again from a test, a notebook or another tool that swaps ``sys.stderr``)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("pe-zoo: %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; the current sys.stderr is always used
        pass


def _configure_logging(quiet: bool) -> None:
    log = logging.getLogger("zoo")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0, or 1 with a one-line error on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["birder"]:  # birder parses its own options (--help included)
        from zoo.cli.birder import run_birder

        try:
            return run_birder(argv[1:])
        except USER_ERRORS as e:
            print("error: " + " ".join(str(e).split()), file=sys.stderr)
            return 1
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        with exit_on_sigterm():  # a conversion on load removes its temporary file when terminated
            return args.func(args)
    except USER_ERRORS as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]
