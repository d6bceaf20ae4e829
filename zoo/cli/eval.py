"""``python -m zoo eval METHOD NAME ...``: zero-shot, retrieval, k-NN and linear-probe evaluation, optionally
checked against Meta's published figure (``--expect``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.cli.common import DTYPES, add_device, add_weights_dir

EXAMPLES = {
    "zeroshot": """examples:
  python -m zoo eval zeroshot rope_i_vit_l14_pn_aps_c1_pe-core --data imagenet/val --classnames imagenet \\
      --templates imagenet --expect imagenet-1k
  python -m zoo eval zeroshot rope_i_vit_b16_pn_aps_c1_pe-core --data my-photos/ --templates simple --plot classes.png
  python -m zoo eval zeroshot runs/b16-flowers/model.safetensors --data flowers/val --json""",
    "retrieval": """examples:
  python -m zoo eval retrieval rope_i_vit_l14_pn_aps_c1_pe-core --pairs coco_karpathy_test.jsonl --images coco/ --expect coco-t2i
  python -m zoo eval retrieval rope_i_vit_b16_pn_aps_c1_pe-core --pairs captions.csv --plot recall.png --out recall.json""",
    "knn": """examples:
  python -m zoo eval knn rope_i_vit_l14_pn_aps_c1_pe-core --train data/train --val data/val -k 20
  python -m zoo embed rope_i_vit_l14_pn_aps_c1_pe-core data/train --out emb-train/ && \\
      python -m zoo eval knn rope_i_vit_l14_pn_aps_c1_pe-core --train emb-train/ --val data/val --json""",
    "linear": """examples:
  python -m zoo eval linear rope_i_vit_b16_pn_aps_c1_pe-core --train data/train --val data/val
  python -m zoo eval linear rope_i_vit_reg1_b16_pn_npn_avg_c1_pe-spatial --train emb-train/ --val emb-val/ --out probe.json""",
}


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an unusable --out/--plot before the (long) evaluation, not after it."""
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path is not None and not path.parent.is_dir():
            raise ValueError(f"{option} {path}: the folder {path.parent} does not exist; create it or choose another path")
    if args.plot is not None:
        from zoo.eval.report import pyplot

        pyplot()


def _run(args: argparse.Namespace) -> dict:
    from zoo.eval.embed import Compute

    compute = Compute(dtype=DTYPES[args.dtype] if args.dtype else None, device=args.device, batch_size=args.batch_size,
                      workers=args.workers, size=args.size, weights_dir=args.weights_dir, progress=not args.quiet)
    if args.method == "zeroshot":
        from zoo.eval.zeroshot import zeroshot

        return zeroshot(args.name, args.data, classnames=args.classnames, templates=args.templates, compute=compute).metrics
    if args.method == "retrieval":
        from zoo.eval.retrieval import retrieval

        return retrieval(args.name, args.pairs, images_dir=args.images, compute=compute).metrics
    if args.method == "knn":
        from zoo.eval.knn import knn

        return knn(args.name, args.train, args.val, k=args.k, temperature=args.temperature, compute=compute)
    from zoo.eval.linear import linear

    return linear(args.name, args.train, args.val, seed=args.seed, compute=compute)


def _table(method: str, result: dict) -> list[str]:
    if method == "retrieval":
        lines = [f"{result['images']} images, {result['captions']} captions", f"{'':<14}{'R@1':>8}{'R@5':>8}{'R@10':>8}"]
        for key, label in (("image_to_text", "image to text"), ("text_to_image", "text to image")):
            lines.append(f"{label:<14}" + "".join(f"{100 * result[key][f'recall@{k}']:>8.2f}" for k in (1, 5, 10)))
        return lines
    lines = [f"{result['n']} images, {len(result['per_class'])} classes", f"top-1  {100 * result['top1']:6.2f} %",
             f"top-5  {100 * result['top5']:6.2f} %"]
    return lines + ([f"C      {result['C']:g} (chosen on a fifth of train)"] if "C" in result else [])


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.eval.published import compare, expected

    if args.expect:
        expected(args.name, args.expect, args.method)  # a figure that cannot be compared fails now, not after the run
    _check_outputs(args)
    result = {"method": args.method, "model": args.name, **_run(args)}
    ok = True
    if args.expect:
        result["expect"] = check = compare(args.name, args.expect, args.method, result, args.tolerance)
        ok = check["ok"]
    if args.out is not None:
        from zoo.eval.report import write_result

        write_result(args.out, result)
    if args.plot is not None:
        from zoo.eval.report import plot

        plot(args.plot, args.method, result, f"{args.method} · {Path(args.name).name}")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.method} · {args.name}")
        print("\n".join(_table(args.method, result)))
        if args.expect:
            c = result["expect"]
            print(f"{c['dataset']}: measured {c['measured']:.2f}, published {c['published']:.2f} ({c['source']}); "
                  f"difference {c['difference']:+.2f} points, {'within' if ok else 'OUTSIDE'} the tolerance of {c['tolerance']:g}")
    return 0 if ok else 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a registry name (see `list`), hf-hub:ORG/REPO, or a file written by `zoo finetune`")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object instead of a table")
    p.add_argument("--out", type=Path, metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw a chart (needs matplotlib: pip install 'pe-zoo[eval]')")
    p.add_argument("--expect", metavar="DATASET",
                   help="compare with Meta's published figure for DATASET (e.g. imagenet-1k, coco-t2i); exit status 1 when outside --tolerance")
    p.add_argument("--tolerance", type=float, default=0.3, metavar="POINTS", help="allowed difference for --expect, in points (default 0.3)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images (and captions) per batch (default 64)")
    p.add_argument("--workers", type=int, metavar="N", help="image decoding processes (default: CPU count, at most 8; 0: in process)")
    p.add_argument("--dtype", choices=list(DTYPES), help="compute dtype (default float32, or that of a `zoo embed` folder)")
    p.add_argument("--size", type=int, help="input size in pixels (default: the native size)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar, warnings only")
    add_weights_dir(p)
    add_device(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` (with its methods zeroshot, retrieval, knn, linear) to the ``python -m zoo`` parser."""
    helptext = "evaluate a checkpoint or a fine-tuned file: zero-shot, retrieval, k-NN, linear probe"
    p = sub.add_parser("eval", help=helptext, description=helptext + "; --expect checks Meta's published figure.")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")

    def method(name: str, helptext: str) -> argparse.ArgumentParser:
        m = methods.add_parser(name, help=helptext, description=helptext + ".", epilog=EXAMPLES[name],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(m)
        m.set_defaults(func=cmd_eval)
        return m

    m = method("zeroshot", "zero-shot classification of an image folder (PE-Core)")
    m.add_argument("--data", type=Path, required=True, metavar="DIR", help="an image folder: one sub-folder of images per class")
    m.add_argument("--classnames", metavar="FILE|imagenet", help="class names, one a line in the folders' sorted order (default: folder names)")
    m.add_argument("--templates", default="imagenet", metavar="FILE|imagenet|simple",
                   help="prompt templates with {} for the name: a file, imagenet (CLIP's 80, default) or simple (CLIP's 7)")
    m = method("retrieval", "image-text retrieval recall@1/5/10 over image-caption pairs (PE-Core)")
    m.add_argument("--pairs", type=Path, required=True, metavar="FILE",
                   help="CSV with image,caption columns; JSON lines {image, caption (text or list)}; or a COCO captions .json")
    m.add_argument("--images", type=Path, metavar="DIR", help="folder the image paths are relative to (default: the pairs file's folder)")
    for name, helptext in (("knn", "weighted k-NN classification on embeddings (DINO's protocol)"),
                           ("linear", "linear probe (logistic regression) on frozen embeddings")):
        m = method(name, helptext)
        m.add_argument("--train", type=Path, required=True, metavar="DIR", help="an image folder (one sub-folder per class) or a `zoo embed` folder of one")
        m.add_argument("--val", type=Path, required=True, metavar="DIR", help="the same, to measure on")
        if name == "knn":
            m.add_argument("-k", type=int, default=20, help="neighbours that vote (default 20)")
            m.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T) (default 0.07)")
        else:
            m.add_argument("--seed", type=int, default=0, help="seed of the held-out split that chooses the regularisation")


__all__ = ["cmd_eval", "register"]
