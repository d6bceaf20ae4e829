"""The weights pipeline's errors: each names what went wrong and how to fix it."""

from __future__ import annotations


class ConversionError(ValueError):
    """A source checkpoint cannot be had or read, or does not fit the requested architecture."""


class OutputError(ConversionError):
    """A weights file cannot be written: its folder is not writable (read-only, no permission, full, not a folder)."""

    def __init__(self, message: str, folder: str) -> None:
        super().__init__(message)
        self.folder = folder


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for an entry could be found or produced."""

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsIntegrityError(ValueError):
    """A weights file failed verification (hash, metadata or tensors): it is never loaded."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line and ``limit`` characters, for one-line errors."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["ConversionError", "OutputError", "WeightsIntegrityError", "WeightsNotFoundError", "first_line"]
