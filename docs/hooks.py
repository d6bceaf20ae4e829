"""MkDocs hook: a page line ``<!-- bench: NAME -->`` becomes a table rendered from ``benchmarks/results/NAME.json``.

Figures are data written by the benchmark scripts (``benchmarks/results.py``), never typed into prose.
A measured figure ``{"median", "min", "max", "n"}`` renders as ``median (min–max, n=N)``. A marker
naming a missing file fails the build, so a page cannot quote a benchmark that was never run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- bench: ([A-Za-z0-9_.-]+) -->$", re.MULTILINE)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and {"median", "min", "max"} <= set(value):
        n = f", n={value['n']}" if "n" in value else ""
        return f"{value['median']:g} ({value['min']:g}–{value['max']:g}{n})"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|")


def render(name: str) -> str:
    """The markdown table (and a line naming machine, date and command) of one result file."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"docs name benchmark result {name!r}, but {path} does not exist: run the benchmark first")
    doc = json.loads(path.read_text())
    rows = doc["rows"]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    m = doc.get("machine", {})
    where = ", ".join(str(x) for x in (m.get("gpu"), m.get("cpu"), f"{m.get('cores')} cores" if m.get("cores") else None,
                                        f"torch {m.get('torch')}" if m.get("torch") else None) if x)
    caption = f"*{where}; {doc.get('date', '')}; `{doc.get('command', '')}`.*"
    if doc.get("notes"):
        caption += f" {doc['notes']}"
    return "\n".join(lines) + "\n\n" + caption + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
