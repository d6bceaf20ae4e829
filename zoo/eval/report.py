"""Results out: the JSON file (written atomically) and a chart (per-class accuracy bars or recall@k curves)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from zoo.collection.store import write_atomic, write_json

MAX_BARS = 40  # more classes than this: the 20 lowest and the 20 highest are drawn


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """``result`` as JSON at ``path``, written to a temporary file beside it and renamed into place."""
    write_json(Path(path), result)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or an ImportError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "pe-zoo[eval]"') from None
    return plt


def plot(path: str | os.PathLike, method: str, result: dict[str, Any], title: str) -> None:
    """A PNG chart of ``result``: recall@k curves for retrieval, else per-class top-1 bars (sorted)."""
    plt = pyplot()
    if method == "retrieval":
        fig, ax = plt.subplots(figsize=(6, 4))
        curves = result["curves"]
        for key, label in (("text_to_image", "text to image"), ("image_to_text", "image to text")):
            ax.plot(curves["k"], [100 * v for v in curves[key]], marker=".", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k (%)")
        ax.set_ylim(0, 100)
        ax.legend()
    else:
        items = sorted(((v, k) for k, v in result["per_class"].items() if v is not None), reverse=True)
        note = ""
        if len(items) > MAX_BARS:
            note = f" ({MAX_BARS // 2} highest and lowest of {len(items)} classes)"
            items = items[:MAX_BARS // 2] + items[-MAX_BARS // 2:]
        fig, ax = plt.subplots(figsize=(7, 1.5 + 0.25 * len(items)))
        ax.barh([k for _, k in items][::-1], [100 * v for v, _ in items][::-1])
        ax.set_xlabel("top-1 accuracy (%)" + note)
        ax.set_xlim(0, 100)
        ax.axvline(100 * result["top1"], color="black", linestyle="--", linewidth=1, label=f"overall {100 * result['top1']:.1f}%")
        ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(Path(path), lambda f: f.write(buffer.getvalue()))


__all__ = ["plot", "pyplot", "write_result"]
