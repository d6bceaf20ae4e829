"""Which images a collection holds: files, folders (recursive), glob patterns and ``@list.txt`` files, in a stable order."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence

from zoo.video import is_video_name

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif", ".avif", ".heic",
})


def is_image_name(path: str) -> bool:
    """Whether a file name has one of the common image extensions (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(folder: str) -> list[str]:
    """The regular image files below ``folder``; each folder walked once, however many links lead to it (no loops)."""
    found, walked = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            dirs[:] = []
            continue
        walked.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # a stable walk: the first link to a folder wins
        found.extend(path for f in files if (is_image_name(f) or is_video_name(f)) and not f.startswith(".")
                     and os.path.isfile(path := os.path.join(root, f)))  # not a FIFO, socket or device
    return sorted(found)


def _list_file(spec: str) -> list[str]:
    path = spec[1:]
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except OSError as e:
        raise ValueError(f"cannot read the list file {path!r} ({e.strerror or e}); pass @FILE with one image path a line") from None
    return [line for line in lines if line.strip()]


def _expand_one(spec: str) -> list[str]:
    if spec.startswith("@"):
        paths = _list_file(spec)  # listed paths are taken as they are: a missing one lands in errors.txt
        if not paths:
            raise ValueError(f"the list file {spec[1:]!r} lists no paths; write one image path a line")
        return paths
    if os.path.isdir(spec):
        images = _folder_images(spec)
        if not images:
            raise ValueError(
                f"the folder {spec!r} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)"
            )
        return images
    if os.path.exists(spec):
        return [spec]
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        images = [m for m in matches if os.path.isfile(m)]  # regular files (and links to them) only
        images += [i for m in matches if os.path.isdir(m) for i in _folder_images(m)]
        if not images:
            raise ValueError(f"the pattern {spec!r} matches no image files; check the pattern (quote it for the shell)")
        return images
    raise ValueError(f"no such file or folder: {spec!r}; pass image files, folders, glob patterns or @list.txt")


def expand_inputs(specs: Sequence[str] | Iterable[str]) -> list[str]:
    """The image paths of ``specs`` in a stable order, each file once (first occurrence wins; two spellings
    of one file, such as ``a.jpg``, ``./a.jpg``, its absolute path or a link to it, are one file).

    A spec is an image file, a folder (all images below it, recursively, sorted), a glob pattern
    (``**`` recurses) or ``@FILE`` (a text file with one path a line, taken in its order, relative
    paths relative to the current folder). Raises ``ValueError`` for a spec that matches nothing.
    """
    seen: set[str] = set()
    paths = []
    for spec in specs:
        for path in _expand_one(os.fspath(spec)):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                paths.append(path)
    if not paths:
        raise ValueError("no inputs: pass image files, folders, glob patterns or @list.txt")
    return paths


__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "is_image_name"]
