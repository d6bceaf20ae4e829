"""``python -m zoo demo``: the whole pipeline on a machine without Hub access, with RANDOM weights.

A Meta-layout checkpoint of the smallest model is written into a Hub cache (temporary, or kept), then the real
code paths run offline: resolve -> convert -> verify -> load -> embed an image -> detection features.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from zoo import paths, weights
from zoo.inference import infer_image
from zoo.loader import load_pretrained_model
from zoo.registry import get_entry
from zoo.testing.hub_cache import use_cache
from zoo.testing.random_weights import install_random_weights

DEMO_MODEL = "rope_i_vit_t16_pn_aps_c1_pe-core"


def demo_image(size: tuple[int, int] = (300, 400)) -> Image.Image:
    """A generated RGB test image: colour gradients with a bright disc."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((y - h / 2) ** 2 + (x - w / 3) ** 2 < (h / 4) ** 2).astype(np.float32)
    rgb = np.stack([x / w, y / h, 0.5 + 0.5 * disc], axis=-1)
    return Image.fromarray((255 * np.clip(rgb, 0, 1)).astype(np.uint8))


def run_demo(say: Callable[[str], None] = logging.getLogger("zoo").info, keep: bool = False) -> None:
    """Run the offline pipeline demo, reporting each step through ``say`` (the CLI passes ``print``).

    ``keep=True``: the random checkpoint goes into the Hugging Face Hub cache and the converted weights into
    the zoo's weights folder, where they stay, so the loaders work offline afterwards; how to go on is said.
    """
    entry = get_entry(DEMO_MODEL)
    say(f"pe-zoo demo: {entry.name} (Meta's {entry.source.repo}), offline, with RANDOM weights.")
    with tempfile.TemporaryDirectory(prefix="pe-zoo-demo-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        cache = install_random_weights([entry.name], None if keep else root / "hub")
        folder = paths.weights_dir() if keep else root / "weights"
        cached = cache / f"models--{entry.source.repo.replace('/', '--')}"
        say(f"1. built a Meta-layout CLIP checkpoint with seeded random weights in the Hub cache {cache} as "
            f"{entry.source.repo}/{entry.source.file} [{time.perf_counter() - t:.1f}s]")
        with use_cache(cache, offline=True):
            say("2. resolve (HF_HUB_OFFLINE=1): where the loader looks, in order:")
            for loc in weights.locate(entry, folder):
                say(f"     {loc.what:20s} {loc.where}: {loc.status()}")
            t = time.perf_counter()
            net, info = load_pretrained_model(entry.name, inference=True, weights_dir=folder, progress_bar=False)
            record = weights.sidecar_path(info.weights)
            say(f"3. convert + verify + load: Meta's file -> {info.weights} (text tower dropped, sha256 recorded "
                f"in {record.name}); net built on the meta device, weights memory-mapped [{time.perf_counter() - t:.1f}s]")
            t = time.perf_counter()
            net, info = load_pretrained_model(entry.name, inference=True, weights_dir=folder)
            say(f"4. load again: the converted file is cached and its recorded sha256 trusted while the file is unchanged "
                f"[{time.perf_counter() - t:.2f}s]")
        transform = info.transform()
        image = demo_image()
        out, embedding = infer_image(net, image, transform, return_embedding=True)
        say(f"5. embed a generated {image.width}x{image.height} image at {info.size[0]}x{info.size[1]}: embedding {embedding.shape}, "
            f"first values {np.array2string(embedding[0, :4], precision=3)}")
        features = net.detection_features(transform(image).unsqueeze(0))
        say(f"6. detection features: {[(k, tuple(v.shape)) for k, v in features.items()]}")
    say("The weights were RANDOM: the numbers above show that the pipeline works, not what PE sees.")
    if keep:
        say(f"Kept: the random checkpoint in {cached} and the converted {info.weights}. Go on offline:")
        say(f'  HF_HUB_OFFLINE=1 python -c "import zoo; net, info = zoo.load_pretrained_model(\'{entry.name}\', inference=True)"')
        say(f"  HF_HUB_OFFLINE=1 python -m zoo info {entry.name}")
        say("  other models: python -c \"from zoo.testing import install_random_weights; install_random_weights(['NAME'])\"")
        say(f"Before using the real weights, delete {info.weights} (and its .sha256.json) and {cached}.")
    else:
        say("python -m zoo demo --keep leaves the random weights installed, to try everything else offline.")
    say(f'With Hub access, the real weights: zoo.load_pretrained_model("{entry.name}", inference=True)')


__all__ = ["DEMO_MODEL", "demo_image", "run_demo"]
