"""``python -m zoo show``: feature PCA, attention, text heat maps and detections as PNG pictures."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from zoo.cli.common import DTYPES, add_device, add_weights_dir

WHAT = ("pca", "attention", "text", "detections")
EXAMPLES = """examples:
  python -m zoo show rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial photo.jpg --what pca --layer 8 --out pca.png
  python -m zoo show rope_i_vit_t16_pn_aps_c1_pe-core a.jpg b.jpg --what attention --out maps/
  python -m zoo show rope_i_vit_t16_pn_aps_c1_pe-core dog.jpg --what text --text "a dog" --out dog.png
"""


def _save(picture, path: Path) -> None:
    """Write a PNG atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        picture.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check(args: argparse.Namespace) -> None:
    """Everything that can be refused before a model is loaded."""
    for image in args.images:
        if not Path(image).is_file():
            raise ValueError(f"{image} is not a file: give image files to show")
    if args.what == "text" and not (args.text or "").strip():
        raise ValueError('--what text needs the words to look for: --text "a dog"')
    if args.what == "detections" and args.detector_weights is None:
        raise ValueError(
            "--what detections needs a trained detector: --detector-weights FILE "
            "(a state dict of zoo.detection.faster_rcnn/mask_rcnn over this backbone, saved with torch.save)"
        )
    if args.what == "text":
        from zoo.registry import get_entry

        if get_entry(args.name).text is None:
            raise ValueError(f"--what text needs a PE-Core (CLIP) model; {args.name} has no text tower")


def _detections(args: argparse.Namespace, images: list) -> list[np.ndarray]:
    from zoo import detection, show
    from zoo.images import open_image
    from zoo.registry import get_entry

    state = torch.load(args.detector_weights, map_location="cpu", weights_only=True)
    key = "roi_heads.box_predictor.cls_score.weight"
    if not isinstance(state, dict) or key not in state:
        raise ValueError(f"{args.detector_weights} is not a zoo detector's state dict (no {key})")
    num_classes = state[key].shape[0]
    build = detection.mask_rcnn if any(k.startswith("roi_heads.mask_predictor.") for k in state) else detection.faster_rcnn
    side = args.size or get_entry(args.name).size[0]
    model = build(args.name, num_classes, pretrained=False, min_size=side, max_size=side)
    model.load_state_dict(state)
    model.eval().to(args.device or "cpu")
    names = ["background", *[s.strip() for s in (args.labels or "").split(",") if s.strip()]] if args.labels else None
    from torchvision.transforms.functional import pil_to_tensor

    out = []
    for image in images:
        pil = open_image(image).convert("RGB")
        with torch.no_grad():
            pred = model([pil_to_tensor(pil).float().div(255).to(args.device or "cpu")])[0]
        out.append(show.draw_detections(
            pil, pred["boxes"].cpu(), pred["labels"].cpu(), pred["scores"].cpu(), class_names=names,
            masks=pred.get("masks", None), score_threshold=args.score_threshold,
        ))
    return out


def cmd_show(args: argparse.Namespace) -> int:
    from zoo import show

    _check(args)
    images = [str(p) for p in args.images]
    if args.what == "detections":
        maps = _detections(args, images)
    elif args.what == "text":
        from zoo.clip import load_pretrained_clip

        model = load_pretrained_clip(args.name, inference=True, dtype=DTYPES[args.dtype], device=args.device,
                                     weights_dir=args.weights_dir)
        if args.size:
            from zoo.transforms import pretrained_cfg
            from zoo.registry import get_entry

            model.visual.pretrained_cfg = pretrained_cfg(args.size, get_entry(args.name).rgb_stats)
        maps = show.text_heatmap(model, images, args.text, method=args.method or "value")
    else:
        from zoo.loader import load_pretrained_model

        net, _ = load_pretrained_model(args.name, inference=True, dtype=DTYPES[args.dtype], device=args.device,
                                       new_size=args.size, weights_dir=args.weights_dir)
        if args.what == "pca":
            maps = show.feature_pca(net, images, layer=args.layer, mask_background=args.mask_background)
        else:
            maps = show.attention(net, images, layer=-1 if args.layer is None else args.layer, method=args.method or "rollout")
    pictures = [show.overlay(image, m) for image, m in zip(images, maps)]
    out = Path(args.out)
    if out.suffix.lower() == ".png":
        _save(pictures[0] if len(pictures) == 1 else show.contact_sheet(pictures), out)
        print(f"wrote {out}")
        return 0
    for image, picture in zip(images, pictures):
        _save(picture, out / f"{Path(image).stem}.{args.what}.png")
    if len(pictures) > 1:
        _save(show.contact_sheet(pictures), out / "contact_sheet.png")
    print(f"wrote {len(pictures)} picture(s){' and contact_sheet.png' if len(pictures) > 1 else ''} to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    helptext = "pictures of what the model sees: feature PCA, attention, text heat maps, detections"
    p = sub.add_parser("show", help=helptext, description=helptext + " (PNG, the map blended over each image)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="registry name of the model (the detector's backbone for --what detections)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--what", choices=WHAT, default="pca", help="what to show (default: pca)")
    p.add_argument("--out", required=True, type=Path,
                   help="a .png file (several images: one contact sheet), or a folder (one PNG per image, and a contact sheet)")
    p.add_argument("--layer", type=int, default=None,
                   help="block index (negatives count from the end): pca of that block's tokens, attention up to it")
    p.add_argument("--method", default=None, choices=("rollout", "last", "value", "gradient"),
                   help="attention: rollout (default) or last; text: value (default) or gradient")
    p.add_argument("--text", default=None, help="--what text: the words to look for")
    p.add_argument("--mask-background", action="store_true", help="pca: black out patches whose first component says background")
    p.add_argument("--detector-weights", type=Path, default=None, help="--what detections: a saved zoo.detection state dict")
    p.add_argument("--labels", default=None, help="--what detections: class names, comma-separated, for classes 1, 2, ...")
    p.add_argument("--score-threshold", type=float, default=0.5, help="--what detections: hide boxes scoring below this (default 0.5)")
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (a multiple of the patch size; default: native); detections: the detector's resize")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_device(p)
    add_weights_dir(p)
    p.set_defaults(func=cmd_show)


__all__ = ["register"]
