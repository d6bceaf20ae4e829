"""Collections: ``embed`` images into a sharded, resumable folder (torchrun-ready) and ``search`` it by text or image."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from zoo.cli.common import DTYPES, add_device, add_weights_dir

BATCH_SIZE = 32


def cmd_embed(args: argparse.Namespace) -> int:
    from zoo.collection import embed_collection

    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 speaks for all
        logging.getLogger("zoo").setLevel(logging.WARNING)
    result = embed_collection(
        args.name, args.inputs, args.out, what=args.what, normalize=args.normalize, store_dtype=args.store_dtype,
        shard_size=args.shard_size, batch_size=args.batch_size, workers=args.workers, dtype=DTYPES[args.dtype],
        device=args.device, size=args.size, weights_dir=args.weights_dir, optimize=args.optimize,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0 and not args.quiet:
        print(f"{result.out}: {result.rows} embeddings in {result.shards} shards, {result.errors} unreadable images"
              + (f" (listed in {result.out / 'errors.txt'})" if result.errors else ""))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from zoo.collection import search

    hits = search(args.directory, k=args.k, text=args.text, image=args.image, device=args.device,
                  weights_dir=args.weights_dir, exact=args.exact)
    if args.json:
        print(json.dumps({"method": hits.method, "reason": hits.reason, "hits": [h.to_dict() for h in hits]}, indent=1))
    else:
        for h in hits:
            print(f"{h.rank:>4}  {h.score:.4f}  {h.path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``embed`` and ``search`` to the ``python -m zoo`` parser."""
    helptext = "embed a collection of images into a sharded, resumable folder (also under torchrun)"
    p = sub.add_parser("embed", help=helptext, description=helptext + ". Restart the same command to resume.")
    p.add_argument("name", help="a registry name (see `list`)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), glob patterns ('photos/**/*.jpg') or @list.txt (one path a line)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: shard-*.npy/.json, manifest.json, errors.txt (an existing one is resumed)")
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
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar, warnings only")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_embed)

    helptext = "search an embedded collection by text or by image (cosine top-k; through its index when current)"
    p = sub.add_parser("search", help=helptext, description=helptext + ".")
    p.add_argument("directory", type=Path, metavar="DIR", help="a folder written by `embed`")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help='a text query, e.g. "a red bicycle" (needs a collection embedded with --what clip)')
    query.add_argument("--image", metavar="IMAGE", help="an image file: its nearest images")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--exact", action="store_true", help="scan every row even when the collection has a current index")
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"method": "index" or "exact", "reason": why the scan, "hits": [rank, score, path, row]}')
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_search)


__all__ = ["cmd_embed", "cmd_search", "register"]
