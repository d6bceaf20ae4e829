"""Publish a converted checkpoint with its card to the Hugging Face Hub.

python -m converters.publish NAME --repo-id ORG/REPO [--weights-dir DIR] [--private] [--dry-run] [--stage-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import zoo
from zoo.cards import render_card
from zoo.hub import PublishError, check_repo_id, checked_text_weights, checked_weights, hub_config, hub_token, stage, upload
from zoo.paths import weights_dir
from zoo.registry import UnknownModelError, get_entry
from zoo.weights import file_sha256
from zoo.weights.convert_text import text_weights_file


def publish(name: str, repo_id: str, *, folder: Path | None, private: bool, dry_run: bool, stage_dir: Path | None) -> None:
    """Check, stage and (unless ``dry_run``) upload one converted checkpoint; prints what it does."""
    entry = get_entry(name)
    check_repo_id(repo_id)
    weights = checked_weights(entry, weights_dir(folder))
    text = checked_text_weights(entry, weights.parent)
    if entry.family == "core" and text is None:
        print(f"note: no {text_weights_file(entry)} beside the weights: the repo will serve the vision tower only "
              "(zoo.load_pretrained_clip needs the text file too)")
    token = None if dry_run else hub_token()
    with tempfile.TemporaryDirectory(prefix=".pe-zoo-publish-", dir=weights.parent) as tmp:  # same disk: hard links
        where = stage_dir if stage_dir is not None else Path(tmp) / entry.name
        weights_files = [weights] + ([text] if text else [])
        config = hub_config(entry, {p.name: file_sha256(p) for p in weights_files})
        files = stage(weights_files, where, config, render_card(entry))
        print(f"staged {entry.name} for {repo_id} in {where}:")
        for fname, size, sha in files:
            print(f"  {fname:50s} {size:>14,d} bytes  sha256 {sha}")
        if dry_run:
            print("dry run: nothing uploaded")
            return
        url = upload(where, repo_id, private=private, token=token, message=f"Upload {entry.name} (pe-zoo {zoo.__version__})")
    sha = next(s for f, _, s in files if f == entry.weights.file)
    print(f"published {entry.name} to {url}")
    print(f"to let zoo.load_pretrained_model download it directly, set in registry.yaml under {entry.name}:\n"
          f"  weights: {{file: {entry.weights.file}, sha256: {sha}, hub_repo: {repo_id}}}\n"
          "then regenerate the cards with `python -m converters.cards`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.publish",
                                     description="Publish a converted checkpoint and its model card to the Hugging Face Hub")
    parser.add_argument("name", help="registry name, e.g. rope_i_vit_l14_pn_aps_c1_pe-core")
    parser.add_argument("--repo-id", required=True, metavar="ORG/REPO", help="the Hub model repo to create or update")
    parser.add_argument("--weights-dir", type=Path, metavar="DIR",
                        help=f"where the converted .safetensors is (default: the zoo's weights folder, now {weights_dir()})")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--dry-run", action="store_true", help="stage and list the files; no token, no network")
    parser.add_argument("--stage-dir", type=Path, metavar="DIR",
                        help="stage into this new or empty folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        publish(args.name, args.repo_id, folder=args.weights_dir, private=args.private,
                dry_run=args.dry_run, stage_dir=args.stage_dir)
    except (PublishError, UnknownModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["PublishError", "checked_weights", "main", "publish"]


if __name__ == "__main__":
    sys.exit(main())
