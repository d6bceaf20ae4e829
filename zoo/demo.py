"""``python -m zoo demo``: the whole pipeline on a machine without Hub access, with RANDOM weights.

A Meta-layout checkpoint of the smallest model is written into a temporary Hub cache, then the real
code paths run offline: resolve -> convert -> verify -> load -> embed an image -> detection features.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoo import weights
from zoo.testing.hub_cache import add_file, use_cache
from zoo.inference import infer_image
from zoo.loader import get_size_from_signature, load_pretrained_model
from zoo.registry import get_entry
from zoo.testing.synthetic import meta_clip_state_dict
from zoo.transforms import classification_transform

DEMO_MODEL = "rope_i_vit_t16_pn_aps_c1_pe-core"


def demo_image(size: tuple[int, int] = (300, 400)) -> Image.Image:
    """A generated RGB test image: colour gradients with a bright disc."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((y - h / 2) ** 2 + (x - w / 3) ** 2 < (h / 4) ** 2).astype(np.float32)
    rgb = np.stack([x / w, y / h, 0.5 + 0.5 * disc], axis=-1)
    return Image.fromarray((255 * np.clip(rgb, 0, 1)).astype(np.uint8))


def run_demo(say: Callable[[str], None] = logging.getLogger("zoo").info) -> None:
    """Run the offline pipeline demo, reporting each step through ``say`` (the CLI passes ``print``)."""
    entry = get_entry(DEMO_MODEL)
    say(f"pe-zoo demo: {entry.name} (Meta's {entry.source.repo}), offline, with RANDOM weights.")
    with tempfile.TemporaryDirectory(prefix="pe-zoo-demo-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        src = root / entry.source.file
        torch.save(meta_clip_state_dict(entry.config, entry.text, seed=0), src)
        cached = add_file(root / "hub", entry.source.repo, entry.source.file, src)
        src.unlink()
        say(f"1. built a Meta-layout CLIP checkpoint with seeded random weights ({cached.stat().st_size / 2**20:.0f} MiB) "
            f"in a temporary Hub cache as {entry.source.repo}/{entry.source.file} [{time.perf_counter() - t:.1f}s]")
        with use_cache(root / "hub", offline=True):
            folder = root / "weights"
            say("2. resolve (HF_HUB_OFFLINE=1): where the loader looks, in order:")
            for loc in weights.locate(entry, folder):
                say(f"     {loc.what:20s} {loc.where}: {loc.status()}")
            t = time.perf_counter()
            net, info = load_pretrained_model(entry.name, inference=True, weights_dir=folder, progress_bar=False)
            record = weights.sidecar_path(info.weights)
            say(f"3. convert + verify + load: Meta's file -> {info.weights.name} (text tower dropped, sha256 recorded "
                f"in {record.name}); net built on the meta device, weights memory-mapped [{time.perf_counter() - t:.1f}s]")
            t = time.perf_counter()
            net, info = load_pretrained_model(entry.name, inference=True, weights_dir=folder)
            say(f"4. load again: the converted file is cached and its recorded sha256 trusted while the file is unchanged "
                f"[{time.perf_counter() - t:.2f}s]")
        size = get_size_from_signature(info.signature)
        transform = classification_transform(size, info.rgb_stats)
        image = demo_image()
        out, embedding = infer_image(net, image, transform, return_embedding=True)
        say(f"5. embed a generated {image.width}x{image.height} image at {size[0]}x{size[1]}: embedding {embedding.shape}, "
            f"first values {np.array2string(embedding[0, :4], precision=3)}")
        features = net.detection_features(transform(image).unsqueeze(0))
        say(f"6. detection features: {[(k, tuple(v.shape)) for k, v in features.items()]}")
    say("The weights were RANDOM: the numbers above show that the pipeline works, not what PE sees.")
    say(f'With Hub access, the real weights: zoo.load_pretrained_model("{entry.name}", inference=True)')


__all__ = ["DEMO_MODEL", "demo_image", "run_demo"]
