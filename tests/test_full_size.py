"""Full-depth L14 and G14 towers against timm, and full-size CLIP against open_clip (opt in: ``pytest -m slow``).

The default suite checks every model at depth 2 (tests/test_net_vs_timm.py, tests/test_clip.py); these run
the real depths on seeded random weights in Meta's layout, in float32. Memory stays near one copy of the
weights: timm and the zoo net are built on the meta device and take the checkpoint's own tensors. Peak
memory: 8.7 GB for the G14 tests (1.9 B parameters, 7.5 GB in float32), 8.5 GB for the L14 CLIP test.
"""

import dataclasses
import time

import open_clip
import pytest
import torch
from open_clip.model import _build_text_tower
from timm.models.eva import checkpoint_filter_fn

import zoo
from tests.oracle import timm_model, timm_outputs
from zoo.clip import PECLIP, load_meta_weights
from zoo.nets.pe_vit import Linear
from zoo.nets.text import PEText
from zoo.registry import find_entry
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict
from zoo.weights import meta_to_zoo
from zoo.weights.convert_text import meta_text_to_zoo

# Bounds on max |zoo - reference| over outputs of O(1) scale, float32, about 4x the measured errors:
# L14 tokens 5.5e-6 (packed linears) and 3.3e-6 (F.linear), G14 tokens 4.5e-6, embeddings and CLIP
# features under 2.2e-6; L14 CLIP image 2.2e-6, text 4.8e-6; G14 text 4.4e-6. A mapping or arithmetic
# bug gives errors of order 0.1 to 1.
TOL = 2e-5
OPEN_CLIP_NAMES = {"L14": "PE-Core-L-14-336", "G14": "PE-Core-bigG-14-448"}


def lean_net(cfg, meta):
    """The zoo net on the meta device, given the checkpoint's own tensors (as the loader does with the file's)."""
    with torch.device("meta"):
        net = zoo.PEViT(cfg)
    net.load_state_dict({k: v.contiguous() for k, v in meta_to_zoo(meta, cfg).items()}, assign=True)
    return net.eval()


def errors_against_timm(entry, cfg, sizes, packs):
    """max |zoo - timm| of tokens, embedding and CLIP embedding at each (h, w) and ``Linear.pack`` setting
    (``pack_float32`` set alike, so ``True`` runs the packed path whatever this CPU's float32 default)."""
    meta = meta_vision_state_dict(cfg, seed=3)
    inputs = {size: torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(sum(size))) for size in sizes}
    refs = {}
    for size, x in inputs.items():  # one timm model at a time, each on the checkpoint's own tensors
        refs[size] = timm_outputs(timm_model(entry, cfg, meta, *size, lean=True), x)
        assert refs[size]["tokens"].abs().mean() > 0.1  # O(1) activations: a mismatch cannot hide
    net = lean_net(cfg, meta)
    errors = {}
    for pack in packs:
        for size, x in inputs.items():
            start, default = time.perf_counter(), (Linear.pack, Linear.pack_float32)
            Linear.pack = Linear.pack_float32 = pack  # pack=True: the packed path on any CPU (float32 too)
            try:
                with torch.no_grad():
                    got = {"tokens": net.forward_features(x), "embedding": net.embedding(x)}
                    if cfg.clip_dim:
                        got["clip"] = net.clip_embedding(x)
            finally:
                Linear.pack, Linear.pack_float32 = default
            ref = refs[size]
            assert got.keys() == ref.keys() and all(got[k].shape == ref[k].shape for k in ref)
            errors[size, pack] = {k: (got[k] - ref[k]).abs().max().item() for k in ref}
            print(f"{entry.variant} {size} pack={pack}: {errors[size, pack]} ({time.perf_counter() - start:.0f} s)")
    return errors


def test_lean_path_at_depth_2():
    """Default suite, fast: the slow tests' path (lean timm oracle, lean zoo net) on an L14 cut to depth 2."""
    entry = find_entry("core", "L14")
    cfg = dataclasses.replace(entry.config, depth=2)
    meta = meta_vision_state_dict(cfg, seed=3)
    x = torch.randn(1, 3, 56, 84)
    want = timm_outputs(timm_model(entry, cfg, meta, 56, 84), x)
    lean = timm_model(entry, cfg, meta, 56, 84, lean=True)
    assert not any(t.is_meta for t in [*lean.parameters(), *lean.buffers()])
    got = timm_outputs(lean, x)
    # same weights, same kernels; a tolerance, since MKL may round differently on differently aligned buffers
    assert all((got[k] - want[k]).abs().max() <= 1e-6 for k in want)
    errors = errors_against_timm(entry, cfg, [(56, 84), (70, 70)], packs=(True, False))
    assert max(e for errs in errors.values() for e in errs.values()) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("variant, other, packs", [
    ("L14", (294, 490), (True, False)),  # the oneDNN-packed path and plain F.linear
    ("G14", (224, 336), (False,)),  # plain F.linear: packed copies would double the 7.5 GB
])
def test_full_depth_matches_timm(variant, other, packs):
    """PE-Core L14 (24 blocks) and G14 (50 blocks, no class token) at the native size and a non-square one."""
    entry = find_entry("core", variant)
    native = (entry.config.image_size, entry.config.image_size)
    errors = errors_against_timm(entry, entry.config, [native, other], packs)
    assert len(errors) == 2 * len(packs)
    for key, errs in errors.items():
        assert max(errs.values()) <= TOL, (key, errs)


def open_clip_reference(name, sd):
    """open_clip's PE-Core model (vision tower: timm) holding the Meta-layout weights ``sd``."""
    ref = open_clip.create_model(name, pretrained=None).eval()
    vision = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    state = {f"visual.trunk.{k}": v for k, v in checkpoint_filter_fn(vision, ref.visual.trunk).items()}
    state.update({k if k == "logit_scale" else f"text.{k}": v for k, v in sd.items() if not k.startswith("visual.")})
    ref.load_state_dict(state)
    return ref


def token_rows(ctx, seed):
    """Start, random ids, end, zero padding; lengths from 1 to the whole context."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(4, ctx, dtype=torch.long)
    for row, n in enumerate([1, 7, ctx // 2, ctx - 2]):
        tokens[row, : n + 2] = torch.cat([torch.tensor([49406]), torch.randint(1, 49406, (n,), generator=gen), torch.tensor([49407])])
    return tokens


@pytest.mark.slow
def test_full_size_l14_clip_matches_open_clip():
    """PE-Core L14 CLIP, both towers at full depth (24 + 24 blocks): image and text features, logit scale
    and the card's label probabilities against open_clip."""
    entry = find_entry("core", "L14")
    sd = meta_clip_state_dict(entry.config, entry.text, seed=7)
    with torch.device("meta"):
        ours = PECLIP(entry.config, entry.text)
    load_meta_weights(ours, sd).eval()
    ref = open_clip_reference(OPEN_CLIP_NAMES["L14"], sd)
    image = torch.rand(1, 3, 336, 336, generator=torch.Generator().manual_seed(1)) * 2 - 1
    text = token_rows(entry.text.context_length, seed=2)
    with torch.no_grad():
        got, want = ours(image, text), ref(image, text)
        raw_img, raw_txt = ours.encode_image(image), ours.encode_text(text)
        ref_img, ref_txt = ref.encode_image(image), ref.encode_text(text)
    assert raw_img.abs().mean() > 0.1 and raw_txt.abs().mean() > 0.1
    errors = {"image": (raw_img - ref_img).abs().max().item(), "text": (raw_txt - ref_txt).abs().max().item()}
    probs, ref_probs = ((s * i @ t.T).softmax(-1) for i, t, s in (got, want))
    errors["probs"] = (probs - ref_probs).abs().max().item()
    print(f"L14 CLIP: max |zoo - open_clip| {errors}")
    assert max(errors.values()) <= TOL, errors
    assert got[2] == want[2]


@pytest.mark.slow
def test_full_depth_g14_text_tower_matches_open_clip():
    """PE-Core G14's text tower at full depth (24 blocks, width 1280, context 72) against open_clip's."""
    entry = find_entry("core", "G14")
    cut_vision = dataclasses.replace(entry.config, depth=1)  # the vision tower is checked against timm above
    sd = {k: v for k, v in meta_clip_state_dict(cut_vision, entry.text, seed=5).items() if not k.startswith("visual.")}
    cfg = open_clip.get_model_config(OPEN_CLIP_NAMES["G14"])
    assert cfg["text_cfg"]["layers"] == entry.text.depth == 24 and cfg["text_cfg"]["context_length"] == 72
    ref = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"]).eval()
    ref.load_state_dict({k: v for k, v in sd.items() if k != "logit_scale"})
    with torch.device("meta"):
        ours = PEText(entry.text, entry.config.clip_dim)
    zoo_sd = meta_text_to_zoo(sd, entry.text, entry.config.clip_dim)
    zoo_sd.pop("logit_scale")
    ours.load_state_dict({k: v.contiguous() for k, v in zoo_sd.items()}, assign=True)
    tokens = token_rows(72, seed=3)
    with torch.no_grad():
        got, want = ours.eval()(tokens), ref(tokens)
    error = (got - want).abs().max().item()
    print(f"G14 text: max |zoo - open_clip| {error}")
    assert want.abs().mean() > 0.1 and got.shape == (4, entry.config.clip_dim)
    assert error <= TOL
