"""The shared command line of the converters: one Meta PE checkpoint -> the zoo's safetensors."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from zoo.convert import ConversionError, convert_checkpoint, download_source, output_path
from zoo.paths import weights_dir
from zoo.registry import find_entry, load_registry
from zoo.weights import record

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def summarize_keys(keys: list[str]) -> str:
    """A one-line summary of state-dict keys, with per-block keys collapsed into an index range."""
    blocks = sorted({int(m.group(1)) for k in keys if (m := _BLOCK.match(k))})
    parts = [k for k in keys if not _BLOCK.match(k)]
    if blocks:
        parts.insert(min(2, len(parts)), f"transformer.resblocks.{{{blocks[0]}..{blocks[-1]}}}.*")
    return f"{len(keys)} key(s): " + ", ".join(parts)


def build_parser(family: str) -> argparse.ArgumentParser:
    variants = sorted(e.variant for e in load_registry().values() if e.family == family)
    parser = argparse.ArgumentParser(
        prog=f"python -m converters.pe_{family}",
        description=f"Convert Meta's PE-{family.capitalize()} checkpoint into the zoo's safetensors layout "
        "(streamed tensor by tensor, strict: every tensor is checked before anything is written).",
    )
    parser.add_argument("--variant", required=True, type=str.upper, choices=variants, help="which model size to convert")
    parser.add_argument("--checkpoint", type=Path, metavar="PATH",
                        help="a local Meta checkpoint (.pt or .safetensors) instead of downloading it from the Hugging Face Hub "
                        "(the Hub download is cached and honours HF_HUB_OFFLINE and HF_TOKEN)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"folder to write <name>.safetensors into (default: the zoo's weights folder, now {weights_dir()})")
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help="store the weights in this dtype (default: keep the checkpoint's dtype)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


def run(family: str, argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert one checkpoint of ``family`` and report; returns the exit status."""
    args = build_parser(family).parse_args(argv)
    entry = find_entry(family, args.variant)
    out_dir = args.out if args.out is not None else weights_dir()
    try:
        if output_path(entry, out_dir).exists() and not args.force:  # before any download
            raise FileExistsError(f"{output_path(entry, out_dir)} already exists; pass --force to overwrite it")
        source = args.checkpoint or download_source(entry, progress=sys.stderr.isatty())
        print(f"converting {source} -> {entry.name}", file=sys.stderr)
        result = convert_checkpoint(entry, source, out_dir, dtype=DTYPES.get(args.dtype), force=args.force)
        record(result.path, result.sha256)  # the loader verifies the file against this sha256 from now on
    except (ConversionError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.dropped:
        print(f"dropped the text tower of the CLIP file, {summarize_keys(result.dropped)}")
    print(f"wrote {result.path}")
    print(f"size {result.size} bytes ({result.size / 2**20:.1f} MiB)")
    print(f"sha256 {result.sha256}  (registry.yaml: {entry.name} -> weights.sha256)")
    return 0
