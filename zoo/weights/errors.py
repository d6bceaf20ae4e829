"""The weights pipeline's errors: each names what went wrong and how to fix it."""

from __future__ import annotations


class ConversionError(ValueError):
    """A source checkpoint cannot be had or read, or does not fit the requested architecture."""


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for an entry could be found or produced."""

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsIntegrityError(ValueError):
    """A weights file failed verification (hash, metadata or tensors): it is never loaded."""


__all__ = ["ConversionError", "WeightsIntegrityError", "WeightsNotFoundError"]
