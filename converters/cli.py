"""The shared command line of the converters: one Meta PE checkpoint -> the zoo's safetensors."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from zoo.fileio import DTYPES
from zoo.paths import weights_dir
from zoo.registry import RegistryError, find_entry, load_registry
from zoo.weights import ConversionError, convert_checkpoint, download_source, file_sha256, load_source, output_path
from zoo.weights.convert import refuse_existing, source_dtype
from zoo.weights.convert_text import convert_text_checkpoint, has_text_tower, text_specs, text_weights_file
from zoo.weights.errors import OutputError
from zoo.weights.writer import exit_on_sigterm

_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def summarize_keys(keys: list[str]) -> str:
    """A one-line summary of state-dict keys, with per-block keys collapsed into an index range."""
    blocks = sorted({int(m.group(1)) for k in keys if (m := _BLOCK.match(k))})
    parts = [k for k in keys if not _BLOCK.match(k)]
    if blocks:
        parts.insert(min(2, len(parts)), f"transformer.resblocks.{{{blocks[0]}..{blocks[-1]}}}.*")
    return f"{len(keys)} key(s): " + ", ".join(parts)


def build_parser(family: str) -> argparse.ArgumentParser:
    variants = sorted({e.variant.split("-")[0] for e in load_registry().values() if e.family == family})
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
                        help="store the weights in this dtype (default: the checkpoint's dominant float dtype; "
                        "every tensor is stored in one dtype)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    if family == "lang":
        parser.add_argument("--tiling", action="store_true",
                            help="the -Tiling checkpoint of the variant (PE-Lang tuned for tiled inputs, e.g. PE-Lang-L14-448-Tiling)")
    if family == "core":
        towers = parser.add_mutually_exclusive_group()
        towers.add_argument("--vision-only", action="store_true",
                            help="skip the CLIP text tower (by default it is written to <name>_text.safetensors beside the vision file)")
        towers.add_argument("--text-only", action="store_true",
                            help="write only the CLIP text tower, <name>_text.safetensors (e.g. after an earlier --vision-only)")
    return parser


def run(family: str, argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert one checkpoint of ``family`` and report; returns the exit status.

    Every error a user can fix is one line on stderr and exit status 1; SIGTERM removes the file being written.
    """
    try:
        parser = build_parser(family)
    except RegistryError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    entry = find_entry(family, args.variant + ("-Tiling" if getattr(args, "tiling", False) else ""))
    out_dir = args.out if args.out is not None else weights_dir()
    dtype = DTYPES.get(args.dtype)
    vision = not getattr(args, "text_only", False)
    text = family == "core" and not getattr(args, "vision_only", False)
    outputs = ([output_path(entry, out_dir)] if vision else []) + ([Path(out_dir) / text_weights_file(entry)] if text else [])
    try:
        with exit_on_sigterm():
            for out in outputs:  # before any download
                refuse_existing(out, args.force)
            source = args.checkpoint or download_source(entry, progress=sys.stderr.isatty())
            print(f"converting {source} -> {entry.name}", file=sys.stderr)
            source_sha256 = None
            if text:  # checked before any file is written; a vision-only source gives the vision file alone
                state = load_source(source)
                text = has_text_tower(state)
                if text:
                    try:
                        text_specs(entry, state, dtype or source_dtype(state), what=Path(source).name)
                    except ConversionError as e:
                        raise ConversionError(f"{e}; pass --vision-only to convert the vision tower alone") from None
                    source_sha256 = file_sha256(source)
                elif not vision:
                    raise ConversionError(f"{source} has no CLIP text tower (token_embedding, text_projection): nothing to write with --text-only")
                else:
                    print("the checkpoint has no text tower: writing the vision weights only", file=sys.stderr)
            results = []
            if vision:
                results.append(convert_checkpoint(entry, source, out_dir, dtype=dtype, force=args.force, source_sha256=source_sha256))
            if text:
                results.append(convert_text_checkpoint(entry, source, out_dir, dtype=dtype, force=args.force,
                                                       source_sha256=source_sha256))
    except OutputError as e:
        print(f"error: {e}; choose another folder with --out DIR", file=sys.stderr)
        return 1
    except (ConversionError, FileExistsError) as e:
        message = " ".join(str(e).split()).replace("force=True (--force)", "--force")  # the library's wording, for the CLI
        print(f"error: {message}", file=sys.stderr)
        return 1
    if vision and results[0].dropped and not text:
        print(f"dropped the text tower of the CLIP file, {summarize_keys(results[0].dropped)}")
    notes = ([f"  (registry.yaml: {entry.name} -> weights.sha256)"] if vision else []) + ["  (the CLIP text tower)"]
    for result, note in zip(results, notes):
        print(f"wrote {result.path}")
        print(f"size {result.size} bytes ({result.size / 2**20:.1f} MiB)")
        print(f"sha256 {result.sha256}{note}")
    return 0


__all__ = ["DTYPES", "build_parser", "run", "summarize_keys"]
