"""Collections: ``embed`` images into a sharded, resumable folder (torchrun-ready) and ``search`` it by text or image."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from zoo.cli.common import DTYPES, add_device, add_weights_dir

BATCH_SIZE = 32
EMBED_EXAMPLES = """examples:
  python -m zoo embed rope_i_vit_b16_pn_aps_c1_pe-core photos/ --out emb/ --what clip --normalize
  python -m zoo embed rope_i_vit_b16_pn_aps_c1_pe-core 'more/**/*.jpg' @list.txt --out emb/ --what clip --normalize --append
  torchrun --nproc-per-node 8 -m zoo embed rope_i_vit_l14_pn_aps_c1_pe-core @list.txt --out emb/ --device cuda
"""
SEARCH_EXAMPLES = """examples:
  python -m zoo search emb/ --text "a red bicycle" -k 5
  python -m zoo search emb/ --image query.jpg --json
"""


def cmd_embed(args: argparse.Namespace) -> int:
    from zoo.collection import embed_collection

    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 speaks for all
        logging.getLogger("zoo").setLevel(logging.WARNING)
    result = embed_collection(
        args.name, args.inputs, args.out, what=args.what, normalize=args.normalize, store_dtype=args.store_dtype,
        shard_size=args.shard_size, batch_size=args.batch_size, workers=args.workers, dtype=DTYPES[args.dtype],
        device=args.device, size=args.size, weights_dir=args.weights_dir, optimize=args.optimize,
        progress=not args.quiet, append=args.append, frames=args.frames, segment_seconds=args.segment_seconds,
        normalize_frames=args.normalize_frames, gpu_decode=args.gpu_decode,
    )
    if int(os.environ.get("RANK", "0")) == 0 and not args.quiet:
        print(f"{result.out}: {result.rows} embeddings in {result.shards} shards, {result.errors} unreadable images"
              + (f" (listed in {result.out / 'errors.txt'})" if result.errors else ""))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from zoo.collection import search
    from zoo.collection.store import escape_line

    hits = search(args.directory, k=args.k, text=args.text, image=args.image, device=args.device,
                  weights_dir=args.weights_dir, exact=args.exact)
    if args.json:
        print(json.dumps({"method": hits.method, "reason": hits.reason, "hits": [h.to_dict() for h in hits]}, indent=1))
    else:
        for h in hits:
            print(f"{h.rank:>4}  {h.score:.4f}  {escape_line(h.path)}" + (f"  {h.start:.2f}-{h.end:.2f} s" if h.start is not None else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``embed`` and ``search`` to the ``python -m zoo`` parser."""
    helptext = "embed a collection of images into a sharded, resumable folder (also under torchrun)"
    p = sub.add_parser("embed", help=helptext, description=helptext + ". Restart the same command to resume.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EMBED_EXAMPLES)
    p.add_argument("name", help="a registry name (see `list`)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders (recursive), glob patterns ('photos/**/*.jpg') or @list.txt (one path a line)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: shard-*.npy/.json, manifest.json, errors.txt (an existing one is resumed)")
    p.add_argument("--append", action="store_true",
                   help="add the inputs a finished --out does not hold yet as new shards (same model and options)")
    p.add_argument("--what", choices=["embedding", "clip"], default="embedding",
                   help="the pooled embedding (default) or clip: projected into CLIP space (PE-Core; needed for text search)")
    p.add_argument("--normalize", action="store_true", help="store unit-length rows")
    p.add_argument("--store-dtype", choices=["float16", "float32"], default="float16", help="dtype on disk (default float16)")
    p.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="images per shard (default 10000)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N", help=f"images per batch (default {BATCH_SIZE})")
    p.add_argument("--workers", type=int, metavar="N", help="image decoding processes (default: CPU count, at most 8; 0: in process)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute dtype (default float32)")
    p.add_argument("--size", type=int, help="input size in pixels (default: the native size)")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=None,
                   help="run through zoo.optimize (default: on from 32 images, where it repays any compile time)")
    p.add_argument("--frames", type=int, default=8, metavar="N",
                   help="frames sampled per video (or per segment), evenly as in Meta's evaluation (default 8)")
    p.add_argument("--segment-seconds", type=float, metavar="S", help="one row per S-second window of each video (default: one row per video)")
    p.add_argument("--normalize-frames", action="store_true",
                   help="average unit-length frame embeddings (Meta's retrieval evaluation) instead of the raw ones (its classification)")
    p.add_argument("--gpu-decode", action=argparse.BooleanOptionalAction, default=None,
                   help="decode and resize JPEGs (and videos, where torchcodec is installed) on the device "
                        "(default: on for CUDA; --no-gpu-decode: the exact CPU path)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar, warnings only")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_embed)

    helptext = "search an embedded collection by text or by image (cosine top-k; through its index when current)"
    p = sub.add_parser("search", help=helptext, description=helptext + ".",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SEARCH_EXAMPLES)
    p.add_argument("directory", type=Path, metavar="DIR", help="a folder written by `embed`")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help='a text query, e.g. "a red bicycle" (needs a collection embedded with --what clip)')
    query.add_argument("--image", metavar="IMAGE", help="an image file: its nearest images")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--exact", action="store_true", help="scan every row even when the collection has a current index")
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"method": "index" or "exact", "reason": why the scan, "hits": [rank, score, path, row]}; '
                        "plain lines escape tabs, newlines and backslashes in paths as \\t \\n \\\\")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_search)


__all__ = ["cmd_embed", "cmd_search", "register"]
