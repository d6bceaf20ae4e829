"""``python -m zoo finetune``: fine-tune a net (or train a linear probe) on an image folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.common import add_device, add_weights_dir


def cmd_finetune(args: argparse.Namespace) -> int:
    from zoo.finetune import FinetuneArgs, finetune

    run = FinetuneArgs(
        name=args.name, data=args.data, out=args.out, linear_probe=args.linear_probe, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
        drop_path=args.drop_path, warmup_epochs=args.warmup_epochs, grad_checkpointing=args.grad_checkpointing,
        dtype=args.dtype, val_fraction=args.val_fraction, size=args.size, seed=args.seed, workers=args.workers,
        device=args.device, weights_dir=args.weights_dir, force=args.force,
    )
    result = finetune(run, progress=not args.quiet)
    m = result.metrics
    print(f"best epoch {m['best_epoch']}: val top-1 {100 * m['best_val_top1']:.2f}% ({m['val_images']} images, {len(result.class_to_idx)} classes)")
    if m["unreadable"]:
        print(f"skipped {len(m['unreadable'])} unreadable image(s), listed in {result.metrics_path}")
    print(f"saved {result.path} and {result.metrics_path}")
    print(f"load it with zoo.load_pretrained_model({str(result.path)!r})")
    return 0


EXAMPLES = """examples:
  python -m zoo finetune rope_i_vit_b16_pn_aps_c1_pe-core --data photos/ --out probe/ --linear-probe
  python -m zoo finetune rope_i_vit_b16_pn_aps_c1_pe-core --data photos/ --out ft/ --epochs 5 --size 224 --grad-checkpointing
  python -m zoo finetune rope_i_vit_t16_pn_aps_c1_pe-core --data dataset/ --out ft/ --force   # dataset/train + dataset/val
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``finetune`` to the ``python -m zoo`` parser."""
    helptext = "fine-tune a model for image classification on an image folder (or train a linear probe)"
    p = sub.add_parser(
        "finetune", help=helptext, description=helptext + ". Writes OUT/model.safetensors and OUT/metrics.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
    )
    p.add_argument("name", help="a registry name (see `list`)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="an ImageFolder tree (one sub-folder of images per class), or DIR/train + DIR/val "
                        "(or validation, valid, test); hidden entries are ignored")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (must not exist or be empty, unless --force)")
    p.add_argument("--linear-probe", action="store_true", help="freeze the backbone, embed every image once, train only the head")
    p.add_argument("--epochs", type=int, default=10, help="default 10")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--lr", type=float, help="peak learning rate of the head (default 1e-3 linear probe, 1e-4 fine-tuning)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on norms, biases, embeddings; default 0.05)")
    p.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay: block i gets lr * D^(depth - i) (default 0.75)")
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate at the last block (default 0.1)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear lr warmup, then cosine decay (default 1)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute each block in backward: far less memory, ~1/3 more time")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: autocast (probe: bfloat16 weights)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out when DIR has no train/val split (default 0.2)")
    p.add_argument("--size", type=int, help="input size in pixels, a multiple of the patch size (default: the native size)")
    p.add_argument("--seed", type=int, default=0, help="seeds the validation split, the head's initialisation and the data order (default 0)")
    p.add_argument("--workers", type=int, metavar="N", help="image decoding processes (default: CPU count, at most 8; 0: in process)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    add_weights_dir(p)
    add_device(p)
    p.set_defaults(func=cmd_finetune)


__all__ = ["cmd_finetune", "register"]
