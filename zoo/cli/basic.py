"""The first commands: list, info, features, classify, demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from zoo import weights
from zoo.cli.common import DTYPES, add_device, add_weights_dir, examples, load_net
from zoo.registry import get_entry, list_pretrained_models


def cmd_list(args: argparse.Namespace) -> int:
    for name in list_pretrained_models(args.pattern):
        e = get_entry(name)
        print(f"{name:48s} {e.source.repo:28s} {e.config.image_size}px  width {e.config.width}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from zoo.models import create_model

    e = get_entry(args.name)
    net = create_model(e.name, device="meta")
    c = e.config
    print(f"{e.name}: {e.description}")
    print(f"family {e.family}, variant {e.variant}, license {e.license}")
    print(f"config {json.dumps(c.to_dict())}")
    proj = f" + {c.width * c.clip_dim:,} (CLIP projection)" if c.clip_dim else ""
    print(f"parameters {net.backbone_parameters():,} (vision tower){proj}")
    print(f"input size {c.image_size}x{c.image_size} (patch {c.patch_size}, grid {c.grid}x{c.grid}; any multiple of {c.patch_size} works)")
    print(f"rgb_stats mean {e.rgb_stats['mean']} std {e.rgb_stats['std']}")
    print(f"source {e.source.repo}/{e.source.file}")
    print(f"weights {e.weights.file} (sha256 {e.weights.sha256 or 'recorded on first use'}); looked for in order:")
    for loc in weights.locate(e, args.weights_dir):
        print(f"  {loc.what:20s} {loc.where}: {loc.status()}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from zoo.inference import open_image

    net, info = load_net(args)
    transform = info.transform()
    x = transform(open_image(args.image)).unsqueeze(0).to(args.device or "cpu")
    with torch.inference_mode():
        features = net.detection_features(x, layers=args.layers)
    for key, value in features.items():
        print(f"{key}: {tuple(value.shape)}")
    if args.out:
        np.savez(args.out, **{k: v.float().cpu().numpy() for k, v in features.items()})
        print(f"saved {', '.join(features)} to {args.out}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from zoo.clip import load_pretrained_clip, zero_shot_classifier
    from zoo.clip.model import fill_template
    from zoo.clip.tokenizer import get_tokenizer
    from zoo.transforms import classification_transform

    labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    if not labels:
        raise ValueError('no labels: pass the class names to rank, comma-separated, e.g. --labels "a cat,a dog,a diagram"')
    templates = args.template or ["{}"]
    for template in templates:  # before the model is loaded
        fill_template(template, labels[0])
    entry = get_entry(args.name)
    model = load_pretrained_clip(
        args.name, inference=True, dtype=DTYPES[args.dtype], device=args.device, weights_dir=args.weights_dir
    )
    transform = classification_transform(entry.size, entry.rgb_stats)
    classifier = zero_shot_classifier(model, get_tokenizer(args.name), labels, templates=templates)
    probs = [_classify_one(model, path, transform, classifier, args) for path in args.images]
    width = max(len(label) for label in labels)
    for path, p in zip(args.images, probs):
        print(path)
        for rank, i in enumerate(p.argsort(descending=True).tolist(), 1):
            print(f"  {rank:>2}  {labels[i]:<{width}}  {100 * p[i].item():6.2f}%")
    return 0


def _classify_one(model, path: str, transform, classifier: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Probabilities of one image, or of one video (``--frames`` frames pooled as in Meta's Kinetics evaluation)."""
    from PIL import Image

    from zoo.clip import zero_shot_classify
    from zoo.inference import open_image
    from zoo.video import is_video_name, sample, zero_shot_classify_video

    device, dtype = args.device or "cpu", DTYPES[args.dtype]
    if is_video_name(path):
        frames = sample(path, args.frames, convert=lambda a: transform(Image.fromarray(a)))[0].frames
        return zero_shot_classify_video(model, torch.stack(frames).to(device, dtype), classifier)
    return zero_shot_classify(model, transform(open_image(path)).unsqueeze(0).to(device, dtype), classifier).float()[0]


def cmd_demo(args: argparse.Namespace) -> int:
    from zoo.demo import run_demo

    run_demo(print, keep=args.keep)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the ``python -m zoo`` parser."""
    p = sub.add_parser(
        "list", help="list the checkpoints the zoo serves",
        description="List the registry's checkpoints: name, Meta's Hub repo, native input size and width.",
        **examples("python -m zoo list", "python -m zoo list '*pe-core'", "python -m zoo list '*_l14_*'"),
    )
    p.add_argument("pattern", nargs="?", help="fnmatch filter, e.g. '*pe-core'")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser(
        "info", help="config, parameters, input size and where the weights are",
        description="Show one checkpoint's config, parameter count, input size and preprocessing, "
                    "and every place its weights are looked for (present or absent).",
        **examples("python -m zoo info rope_i_vit_t16_pn_aps_c1_pe-core",
                   "python -m zoo info rope_i_vit_l14_pn_aps_c1_pe-core --weights-dir ./weights"),
    )
    p.add_argument("name", help="a registry name (see `list`)")
    add_weights_dir(p)
    p.set_defaults(func=cmd_info)
    helptext = "dense detection feature maps of one image"
    p = sub.add_parser(
        "features", help=helptext, description=helptext,
        **examples("python -m zoo features rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial photo.jpg",
                   "python -m zoo features rope_i_vit_l14_pn_aps_c1_pe-core photo.jpg --layers 11 17 -1 --out feats.npz",
                   "python -m zoo features rope_i_vit_b16_pn_aps_c1_pe-core photo.jpg --size 448 --dtype bfloat16"),
    )
    p.add_argument("name", help="a registry name (see `list`)")
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--layers", type=int, nargs="+", metavar="I",
                   help="block indices to tap (negatives count from the end); default: the final 'neck' map")
    p.add_argument("--out", type=Path, metavar="FILE.npz", help="save the feature maps as .npz")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute dtype (default float32)")
    p.add_argument("--size", type=int, help="input size in pixels (default: the native size)")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_features)
    p = sub.add_parser("classify", help="zero-shot classification of images or videos over your labels (PE-Core CLIP models)",
                       description="Rank the labels for each image or video by CLIP probability (PE-Core models only).",
                       **examples('python -m zoo classify rope_i_vit_b16_pn_aps_c1_pe-core cat.png dog.jpg --labels "a cat,a dog"',
                                  'python -m zoo classify rope_i_vit_l14_pn_aps_c1_pe-core photos/*.jpg --labels "cat,dog,bird" '
                                  '--template "a photo of a {}." --template "a drawing of a {}."',
                                  'python -m zoo classify rope_i_vit_t16_pn_aps_c1_pe-core clip.mp4 --labels "cooking,dancing,surfing"'))
    p.add_argument("name", help="a PE-Core registry name (see `list '*pe-core'`)")
    p.add_argument("images", nargs="+", metavar="FILE", help="image or video files")
    p.add_argument("--frames", type=int, default=8, metavar="N",
                   help="frames sampled per video, evenly, their embeddings averaged as in Meta's evaluation (default 8)")
    p.add_argument("--labels", help='comma-separated class names, e.g. "a cat,a dog,a diagram"')
    p.add_argument("--template", action="append", metavar="TEXT",
                   help="a prompt with {} for the label, e.g. 'a photo of {}.' (repeat to average several; default: the label as is)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute dtype (default float32)")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_classify)
    p = sub.add_parser(
        "demo", help="the whole pipeline offline, with RANDOM weights (no Hub access needed)",
        description="Run the real pipeline offline on PE-Core-T16 with RANDOM weights: write a Meta-layout "
                    "checkpoint into a temporary Hub cache, then resolve, convert, verify, load, embed an image "
                    "and compute detection features, printing each step.",
        **examples("python -m zoo demo", "python -m zoo demo --keep", "python -m zoo demo --quiet"),
    )
    p.add_argument("--keep", action="store_true",
                   help="leave the random weights in the Hub cache and the weights folder, to try everything offline")
    p.set_defaults(func=cmd_demo)


__all__ = ["register"]
