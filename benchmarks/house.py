"""The house measured from its imports (ast, nothing imported): import circles, imports running back up the floors,
and calls on the path of ``load_pretrained_model`` that climb back up. ``--before REV`` measures a git revision too.

    python benchmarks/house.py --before 79c8bbc
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_result  # noqa: E402
from zoo.testing import layout  # noqa: E402


def counts(root: Path, label: str) -> dict[str, object]:
    g = layout.graph(root)
    return {
        "tree": label, "modules": len(g), "import circles": len(layout.circles(g)), "imports back up": len(layout.upward(g)),
        "load path climbs": len(layout.climbs(root=root)),
        "which": "; ".join([" <-> ".join(c) for c in layout.circles(g)] + [f"{a} -> {b}" for a, b in layout.upward(g)]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", metavar="REV", help="also measure this git revision (e.g. the branch's base)")
    args = p.parse_args(argv)
    rows = []
    if args.before:
        data = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "zoo", "converters"], capture_output=True, check=True).stdout
        with tempfile.TemporaryDirectory() as tmp:
            tarfile.open(fileobj=io.BytesIO(data)).extractall(tmp, filter="data")
            rows.append(counts(Path(tmp), f"before ({args.before})"))
    rows.append(counts(ROOT, "now"))
    for row in rows:
        print(row)
    write_result("house", rows, notes="floors: " + " -> ".join(name for name, _ in layout.FLOORS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
