"""The CLIP tokenizer against open_clip's PE-Core tokenizer: differences on a large fuzz corpus, and speed.

    python benchmarks/tokenizer.py [--per-kind 2000] [--seed 1] [--repeats 5]

Measured 2026-11-26 on the shared 2-core dev machine (load average ~9): 10,000 strings, 0 differences;
seconds per corpus over 5 interleaved repeats, zoo min/median/max 7.79/8.12/10.21, open_clip 7.23/7.48/7.96.

The corpus is the test's generator (tests/test_tokenizer.py: every Unicode plane with assigned characters,
Latin-1 with controls, mojibake, nested HTML entities, ASCII words) with another seed and more strings.
Each repeat tokenizes the whole corpus with a fresh tokenizer of each library (no warm BPE cache),
interleaved, and reports min/median/max seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.results import summary, write_result  # noqa: E402
from tests.test_tokenizer import fuzz_corpus  # noqa: E402
from zoo.clip.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    args = parser.parse_args()
    texts = fuzz_corpus(args.per_kind, args.seed)
    times: dict[str, list[float]] = {"zoo": [], "open_clip": []}
    for _ in range(args.repeats):
        for lib, make in (("zoo", lambda: Tokenizer(77)), ("open_clip", lambda: open_clip.get_tokenizer("PE-Core-T-16-384", context_length=77))):
            tok = make()
            t = time.perf_counter()
            ids = tok(texts)
            times[lib].append(time.perf_counter() - t)
            if lib == "zoo":
                ours = ids
            else:
                ref = ids
    diff = sum(not torch.equal(a, b) for a, b in zip(ours, ref))
    print(f"{len(texts)} strings (seed {args.seed}): {diff} differ from open_clip")
    for lib, ts in times.items():
        print(f"{lib:10s} s/corpus min {min(ts):.3f}  median {statistics.median(ts):.3f}  max {max(ts):.3f}")
    ratios = summary([z / o for z, o in zip(times["zoo"], times["open_clip"])])
    rows = [{"library": "zoo", "strings": len(texts), "ids differing from open_clip": diff,
             "s per corpus": summary(times["zoo"]), "zoo / open_clip (per repeat)": ratios},
            {"library": "open_clip", "strings": len(texts), "s per corpus": summary(times["open_clip"])}]
    print(f"wrote {write_result('tokenizer', rows, notes=args.notes)}")


if __name__ == "__main__":
    main()
