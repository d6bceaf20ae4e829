"""Peak anonymous memory of the converter on a full-size PE-Core checkpoint (default G14, ~9 GiB with its text tower).

Builds a synthetic CLIP checkpoint in Meta's layout (one storage per tensor, like Meta's files) in a
temporary folder, converts it with ``python -m converters.pe_core`` in the source dtype and with
``--dtype bfloat16``, samples the converter's ``RssAnon`` (memory that cannot be paged back to a file;
the memory-mapped source does not count) every few ms, prints peaks and times, and deletes everything.

    python benchmarks/convert_memory.py [--variant G14]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import write_result  # noqa: E402
from zoo.registry import find_entry  # noqa: E402
from zoo.testing.synthetic import text_shapes, vision_shapes  # noqa: E402

BOUND = 1 << 30  # 1 GiB
REPO_ROOT = Path(__file__).resolve().parents[1]


def build_source(variant: str, folder: Path) -> Path:
    """Save a seeded random Core CLIP checkpoint in Meta's layout without holding it in anonymous memory.

    Each tensor is backed by its own scratch file (shared memory map), so the data lives in the page
    cache, which the kernel can write back; the scratch files are removed once the checkpoint is saved.
    """
    entry = find_entry("core", variant)
    shapes = [(f"visual.{k}", s) for k, s, _ in vision_shapes(entry.config)]
    shapes += [(k, s) for k, s, _ in text_shapes(entry.text, entry.config.clip_dim)]
    scratch = folder / "scratch"
    scratch.mkdir()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i, (key, shape) in enumerate(shapes):
        n = 1
        for d in shape:
            n *= d
        path = scratch / f"{i}.bin"
        with open(path, "wb") as f:
            f.truncate(4 * n)
        state[key] = torch.from_file(str(path), shared=True, size=n, dtype=torch.float32).view(shape).normal_(0, 0.02, generator=gen)
    source = folder / entry.source.file
    torch.save(state, source)
    del state
    shutil.rmtree(scratch)
    return source


def rss_anon(pid: int) -> int | None:
    """RssAnon of a process in bytes (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def convert(variant: str, source: Path, out: Path, dtype: str | None) -> tuple[int, float, int]:
    """Run the converter in a subprocess; return (peak RssAnon bytes, seconds, output size)."""
    cmd = [sys.executable, "-m", "converters.pe_core", "--variant", variant, "--checkpoint", str(source),
           "--out", str(out), "--force"] + (["--dtype", dtype] if dtype else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon(proc.pid) or 0)
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"converter failed ({proc.returncode}):\n{stderr}")
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    shutil.rmtree(out)
    return peak, seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="G14", help="PE-Core variant to build and convert (default G14)")
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = parser.parse_args()
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="pe-zoo-convert-memory-", dir="/tmp"))
    try:
        start = time.perf_counter()
        source = build_source(args.variant, folder)
        print(f"built synthetic PE-Core-{args.variant} source: {source.stat().st_size / 2**30:.2f} GiB "
              f"in {time.perf_counter() - start:.0f} s")
        for dtype in (None, "bfloat16"):
            peak, seconds, size = convert(args.variant, source, folder / "out", dtype)
            print(f"--dtype {dtype or '(source: float32)':18s} peak RssAnon {peak / 2**20:7.0f} MiB "
                  f"({peak / BOUND:.2f} of the 1 GiB bound)  time {seconds:6.1f} s  output {size / 2**30:.2f} GiB")
            rows.append({"variant": args.variant, "source GiB": round(source.stat().st_size / 2**30, 3),
                         "dtype": dtype or "source (float32)", "peak RssAnon MiB": round(peak / 2**20),
                         "bound MiB": BOUND // 2**20, "seconds": round(seconds, 1), "output GiB": round(size / 2**30, 3)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {write_result('convert_memory', rows, notes=args.notes)}")


if __name__ == "__main__":
    main()
