"""The ``export`` command: a checkpoint to an ONNX file or a ``torch.export`` program, checked against the eager net."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.common import DTYPES, add_weights_dir

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    fmt = FORMATS.get(args.out.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {args.out.name!r}: pass --format onnx or --format pt2 "
                         "(or name the file *.onnx / *.pt2)")
    return fmt


EXAMPLES = """examples:
  python -m zoo export rope_i_vit_b16_pn_aps_c1_pe-core --out b16.onnx
  python -m zoo export rope_i_vit_b16_pn_aps_c1_pe-core --out b16.pt2 --method clip_embedding --size 320
  python -m zoo export rope_i_vit_b16_pn_aps_c1_pe-core --out b16-any.onnx --dynamic batch,size --force
"""


def cmd_export(args: argparse.Namespace) -> int:
    from zoo import export

    fmt = _format(args)
    if args.out.exists() and not args.force:  # before loading any weights
        raise FileExistsError(f"{args.out} already exists; pass --force to replace it, or choose another --out")
    if fmt == "onnx":
        export.require_onnx()  # before loading any weights
    dtype = DTYPES[args.dtype]
    if args.text:
        if args.method or args.size or args.layers or args.dynamic != "batch":
            raise ValueError("--text exports the text tower (token ids -> text features, dynamic batch): "
                             "drop --method, --size, --layers and --dynamic")
        from zoo.clip import load_pretrained_clip

        net = load_pretrained_clip(args.name, inference=True, dtype=dtype, weights_dir=args.weights_dir).text
        options: dict = {}
    else:
        from zoo.loader import load_pretrained_model

        net, _ = load_pretrained_model(args.name, inference=True, dtype=dtype, new_size=args.size, weights_dir=args.weights_dir)
        options = {"method": args.method, "size": args.size, "dynamic": args.dynamic, "layers": args.layers}
    if fmt == "onnx":
        export.to_onnx(net, args.out, opset=args.opset, force=args.force, **options)
    else:
        if args.opset is not None:
            raise ValueError("--opset applies to --format onnx only")
        export.to_pt2(net, args.out, force=args.force, **options)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` command to the ``python -m zoo`` parser."""
    from zoo.export import DYNAMIC, METHODS

    helptext = "export a checkpoint to ONNX or a torch.export program (.pt2), checked against the eager net"
    p = sub.add_parser("export", help=helptext, description=helptext + "; the file appears only when the check passes",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("name", help="a registry name (see `list`)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write (*.onnx or *.pt2)")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="default: from the --out suffix")
    p.add_argument("--method", choices=METHODS,
                   help="what the graph computes (default: embedding; forward for a net with a classifier head)")
    p.add_argument("--layers", type=int, nargs="+", metavar="I",
                   help="detection_features: block indices to output as block{i} (default: the final 'neck' map)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="traced input size in pixels, square (default: the native size); other sizes: --dynamic batch,size")
    p.add_argument("--dynamic", choices=DYNAMIC, default="batch", metavar="AXES",
                   help="dynamic axes: 'batch' (default), or 'batch,size' (also height and width: any multiple of the patch size)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="weights and input dtype (default float32; ONNX: float32 or float16)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: torch's exporter's)")
    p.add_argument("--text", action="store_true", help="export the PE-Core text tower (token ids in, text features out)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_weights_dir(p)
    p.set_defaults(func=cmd_export)


__all__ = ["cmd_export", "register"]
