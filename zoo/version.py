"""The package version, read once from the installed metadata (pyproject.toml is the one place it is set)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("pe-zoo")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
