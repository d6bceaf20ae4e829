"""The shared command line of the converters: one Meta PE checkpoint -> the zoo's safetensors."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from zoo.weights import ConversionError, convert_checkpoint, download_source, file_sha256, load_source, output_path
from zoo.weights.convert_text import convert_text_checkpoint, has_text_tower, text_specs, text_weights_file
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
    if family == "core":
        parser.add_argument("--vision-only", action="store_true",
                            help="skip the CLIP text tower (by default it is written to <name>_text.safetensors beside the vision file)")
    return parser


def run(family: str, argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert one checkpoint of ``family`` and report; returns the exit status."""
    args = build_parser(family).parse_args(argv)
    entry = find_entry(family, args.variant)
    out_dir = args.out if args.out is not None else weights_dir()
    text = family == "core" and not args.vision_only
    outputs = [output_path(entry, out_dir)] + ([Path(out_dir) / text_weights_file(entry)] if text else [])
    try:
        for out in outputs:
            if out.exists() and not args.force:  # before any download
                raise FileExistsError(f"{out} already exists; pass --force to overwrite it")
        source = args.checkpoint or download_source(entry, progress=sys.stderr.isatty())
        print(f"converting {source} -> {entry.name}", file=sys.stderr)
        source_sha256 = None
        if text:  # checked before any file is written; a vision-only source gives the vision file alone
            state = load_source(source)
            text = has_text_tower(state)
            if text:
                try:
                    text_specs(entry, state, what=Path(source).name)
                except ConversionError as e:
                    raise ConversionError(f"{e}; pass --vision-only to convert the vision tower alone") from None
                source_sha256 = file_sha256(source)
            else:
                print("the checkpoint has no text tower: writing the vision weights only", file=sys.stderr)
        results = [convert_checkpoint(entry, source, out_dir, dtype=DTYPES.get(args.dtype), force=args.force,
                                      source_sha256=source_sha256)]
        if text:
            results.append(convert_text_checkpoint(entry, source, out_dir, dtype=DTYPES.get(args.dtype), force=args.force,
                                                   source_sha256=source_sha256))
        for result in results:
            record(result.path, result.sha256)  # the loader verifies each file against this sha256 from now on
    except (ConversionError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if results[0].dropped and not text:
        print(f"dropped the text tower of the CLIP file, {summarize_keys(results[0].dropped)}")
    for result, note in zip(results, [f"  (registry.yaml: {entry.name} -> weights.sha256)", "  (the CLIP text tower)"]):
        print(f"wrote {result.path}")
        print(f"size {result.size} bytes ({result.size / 2**20:.1f} MiB)")
        print(f"sha256 {result.sha256}{note}")
    return 0


__all__ = ["DTYPES", "build_parser", "run", "summarize_keys"]
