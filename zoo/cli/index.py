"""Large collections: ``index`` builds a FAISS index inside a collection; ``serve`` opens a local search page over it."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.common import add_device, add_weights_dir


def cmd_index(args: argparse.Namespace) -> int:
    from zoo.collection.index import build_index

    info = build_index(args.directory, kind=args.kind, recall=args.recall, rebuild=args.rebuild, progress=not args.quiet)
    if not args.quiet:
        params = ", ".join(f"{k} {v}" for k, v in info.params.items())
        print(f"{args.directory}: {info.kind} index over {info.rows} rows ({info.added} added), "
              f"recall@10 {info.recall:.3f} against the exact scan" + (f"; {params}" if params else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from zoo.serve import serve

    serve(args.directory, host=args.host, port=args.port, exact=args.exact, device=args.device, weights_dir=args.weights_dir)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``index`` and ``serve`` to the ``python -m zoo`` parser."""
    helptext = "build or update the search index of an embedded collection (FAISS, the [index] extra)"
    p = sub.add_parser("index", help=helptext, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=helptext + ". Rows are streamed shard by shard; run it again after the collection grows.",
                       epilog="examples:\n"
                              "  python -m zoo index photos.emb\n"
                              "  python -m zoo index photos.emb --kind ivfpq --recall 0.98\n"
                              "  python -m zoo index photos.emb --rebuild")
    p.add_argument("directory", type=Path, metavar="DIR", help="a folder written by `embed`")
    p.add_argument("--kind", choices=["flat", "ivfpq"],
                   help="flat (exact) or ivfpq (compressed, approximate); default: flat below 200,000 rows")
    p.add_argument("--recall", type=float, default=0.95, help="recall@10 target against the exact scan (default 0.95)")
    p.add_argument("--rebuild", action="store_true", help="build anew instead of adding the new shards' rows")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar, warnings only")
    p.set_defaults(func=cmd_index)

    helptext = "serve a local search page and JSON API over an embedded collection (the [serve] extra)"
    p = sub.add_parser("serve", help=helptext, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=helptext + ". Stop it with Ctrl-C.",
                       epilog="examples:\n"
                              "  python -m zoo serve photos.emb            # then open http://127.0.0.1:8000/\n"
                              "  python -m zoo serve photos.emb --port 8080\n"
                              "  curl 'http://127.0.0.1:8000/search?text=a+red+bicycle&k=5'")
    p.add_argument("directory", type=Path, metavar="DIR", help="a folder written by `embed`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--exact", action="store_true", help="scan every row even when the collection has a current index")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_serve)


__all__ = ["cmd_index", "cmd_serve", "register"]
