"""Benchmark results as data: every script in ``benchmarks/`` writes one JSON file with ``write_result``.

A result file holds the machine (CPU model, cores, memory), the torch version, the date, the command
that made it, and ``rows``: a list of flat dicts, one per measured case. A measured figure is a dict
made by ``summary(samples)``: ``median``, ``min``, ``max`` and ``n`` (the spread, so a reader sees
whether noise could flip a comparison). The docs render ``benchmarks/results/NAME.json`` as a table
wherever a page holds the line ``<!-- bench: NAME -->`` (``docs/hooks.py``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def summary(samples: Sequence[float], digits: int = 4) -> dict[str, float | int]:
    """Median, min, max and count of repeated measurements (rounded to ``digits`` significant digits)."""
    if not samples:
        raise ValueError("summary() needs at least one sample")

    def r(v: float) -> float:
        return float(f"{v:.{digits}g}")

    return {"median": r(statistics.median(samples)), "min": r(min(samples)), "max": r(max(samples)), "n": len(samples)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _without_notes(args: list[str]) -> list[str]:
    """The command-line arguments less ``--notes TEXT`` (the notes are stored on their own)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--notes":
            skip = True
        elif not a.startswith("--notes="):
            out.append(a)
    return out


def write_result(name: str, rows: list[dict[str, Any]], *, notes: str = "", out_dir: Path | None = None) -> Path:
    """Write ``rows`` as ``benchmarks/results/NAME.json`` (atomically) with the machine and date; returns the path."""
    folder = Path(out_dir) if out_dir is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *_without_notes(sys.argv[1:])]),
        "machine": machine(),
        "notes": notes,
        "rows": rows,
    }
    path = folder / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
