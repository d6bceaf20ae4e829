"""Publish a converted checkpoint with its card to the Hugging Face Hub.

python -m converters.publish NAME --repo-id ORG/REPO [--weights-dir DIR] [--private] [--dry-run] [--stage-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import zoo
from zoo.cards import render_card
from zoo.weights import ConversionError, file_sha256, read_metadata
from zoo.weights.convert_text import text_weights_file
from zoo.paths import weights_dir
from zoo.registry import Entry, UnknownModelError, get_entry
from zoo.weights import converter_command


class PublishError(Exception):
    """Publishing cannot go on; the message says why and what to do."""


def preprocessing(entry: Entry) -> dict[str, Any]:
    """The inference preprocessing of an entry, as data (what ``zoo.classification_transform`` does)."""
    return {
        "resize": list(entry.size),
        "resize_mode": "squash",  # the whole image, aspect ratio not kept
        "interpolation": "bilinear",
        "color_mode": "RGB",
        "rescale_factor": 1 / 255,
        "mean": entry.rgb_stats["mean"],
        "std": entry.rgb_stats["std"],
    }


def hub_config(entry: Entry) -> dict[str, Any]:
    """The ``config.json`` published beside the weights."""
    return {
        "name": entry.name,
        "family": entry.family,
        "variant": entry.variant,
        "architecture": entry.config.to_dict(),
        "signature": entry.signature,
        "rgb_stats": entry.rgb_stats,
        "preprocessing": preprocessing(entry),
        "weights_file": entry.weights.file,
        "base_model": entry.source.repo,
        "zoo_version": zoo.__version__,
    }


def _check_holds(entry: Entry, path: Path, folder: Path) -> None:
    try:
        held = read_metadata(path).get("name")
    except ConversionError as e:
        raise PublishError(str(e)) from None
    if held != entry.name:
        raise PublishError(f"{path} holds {held!r}, not {entry.name!r}; reconvert it with "
                           f"`{converter_command(entry, folder)} --force`")


def checked_weights(entry: Entry, folder: Path) -> Path:
    """The entry's converted weights in ``folder``, checked to hold this entry and (if known) the registry's sha256."""
    path = folder / entry.weights.file
    if not path.is_file():
        raise PublishError(f"no converted weights for {entry.name} at {path}; convert them first with "
                           f"`{converter_command(entry, folder)}` or pass --weights-dir")
    _check_holds(entry, path, folder)
    if entry.weights.sha256 is not None:
        sha = file_sha256(path)
        if sha != entry.weights.sha256:
            raise PublishError(f"{path} has sha256 {sha} but registry.yaml expects {entry.weights.sha256}; "
                               f"reconvert it with `{converter_command(entry, folder)} --force`")
    return path


def checked_text_weights(entry: Entry, folder: Path) -> Path | None:
    """A PE-Core entry's CLIP text file in ``folder`` (checked to hold this entry), if it is there."""
    path = folder / text_weights_file(entry)
    if entry.family != "core" or not path.is_file():
        return None
    _check_holds(entry, path, folder)
    return path


def stage(entry: Entry, weights: list[Path], folder: Path) -> list[tuple[str, int, str]]:
    """Create ``folder`` (new or empty) with the weights files, ``config.json`` and the card as ``README.md``.

    It is filled beside its final place and moved there at the end, so a failure leaves nothing behind.
    The weights are hard-linked when possible. Returns ``(file name, size, sha256)`` of each staged file.
    """
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PublishError(f"staging folder {folder} is not empty; pick a new or empty folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for path in weights:
            try:
                os.link(path, tmp / path.name)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(path, tmp / path.name)
        (tmp / "config.json").write_text(json.dumps(hub_config(entry), indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(render_card(entry.name), encoding="utf-8")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [(p.name, p.stat().st_size, file_sha256(p)) for p in sorted(folder.iterdir())]


def hub_token() -> str:
    """The Hugging Face token from ``HF_TOKEN`` or the huggingface_hub login."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    return token


def upload(folder: Path, repo_id: str, *, private: bool, token: str, message: str) -> str:
    """Create the Hub repo if needed and upload the staged folder in one commit; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
        return str(url)
    except Exception as e:  # HTTP, connection, offline-mode and validation errors all end here
        first = (str(e).strip().splitlines() or [""])[0].replace(token, "***")
        raise PublishError(f"the Hugging Face Hub refused or failed the upload to {repo_id}: {type(e).__name__}: {first}") from None


def publish(name: str, repo_id: str, *, folder: Path | None, private: bool, dry_run: bool, stage_dir: Path | None) -> None:
    """Check, stage and (unless ``dry_run``) upload one converted checkpoint; prints what it does."""
    entry = get_entry(name)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo-id must look like ORG/REPO, got {repo_id!r}")
    weights = checked_weights(entry, weights_dir(folder))
    text = checked_text_weights(entry, weights.parent)
    if entry.family == "core" and text is None:
        print(f"note: no {text_weights_file(entry)} beside the weights: the repo will serve the vision tower only "
              "(zoo.load_pretrained_clip needs the text file too)")
    token = None if dry_run else hub_token()
    with tempfile.TemporaryDirectory(prefix=".pe-zoo-publish-", dir=weights.parent) as tmp:  # same disk: hard links
        where = stage_dir if stage_dir is not None else Path(tmp) / entry.name
        files = stage(entry, [weights] + ([text] if text else []), where)
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


if __name__ == "__main__":
    sys.exit(main())
