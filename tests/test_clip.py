"""zoo's PE-Core CLIP reproduces open_clip's (an independent oracle) on the same random weights."""

import dataclasses
import functools

import open_clip
import pytest
import torch
from open_clip.model import _build_text_tower
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from timm.models.eva import checkpoint_filter_fn

import zoo
from zoo.clip import PECLIP, create_clip, load_meta_weights, zero_shot_classifier, zero_shot_classify
from zoo.weights import ConversionError
from zoo.weights.convert_text import meta_text_to_zoo
from zoo.nets.text import PEText
from zoo.registry import find_entry
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict

TOL = 1e-5
OPEN_CLIP_NAMES = {"T16": "PE-Core-T-16-384", "S16": "PE-Core-S-16-384", "B16": "PE-Core-B-16",
                   "L14": "PE-Core-L-14-336", "G14": "PE-Core-bigG-14-448"}
UNIT_TEXT_DEPTH = 2  # B/L/G text towers (24 blocks) are cut to this depth in unit tests
CARD_LABELS = ["a diagram", "a dog", "a cat"]


def unit_text(entry):
    return entry.text if entry.variant in ("T16", "S16") else dataclasses.replace(entry.text, depth=UNIT_TEXT_DEPTH)


def meta_text(sd):
    return {k: v for k, v in sd.items() if not k.startswith("visual.")}


def token_batch(ctx, gen):
    """Start, random ids, end, zero padding: rows of different lengths, one filling the whole context."""
    lengths = [1, 5, ctx // 2, ctx - 2]
    tokens = torch.zeros(len(lengths), ctx, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, : n + 2] = torch.cat([torch.tensor([49406]), torch.randint(1, 49406, (n,), generator=gen), torch.tensor([49407])])
    return tokens


@pytest.mark.parametrize("variant", list(OPEN_CLIP_NAMES))
def test_text_tower_matches_open_clip(variant):
    entry = find_entry("core", variant)
    text = unit_text(entry)
    sd = meta_text(meta_clip_state_dict(dataclasses.replace(entry.config, depth=1), text, seed=5))
    cfg = open_clip.get_model_config(OPEN_CLIP_NAMES[variant])
    assert (cfg["text_cfg"]["width"], cfg["text_cfg"]["heads"], cfg["text_cfg"]["context_length"], cfg["embed_dim"]) == (
        text.width, text.heads, text.context_length, entry.config.clip_dim)  # the registry agrees with open_clip
    assert cfg["text_cfg"]["layers"] == entry.text.depth and 4 * text.width == text.mlp_dim
    ref = _build_text_tower(cfg["embed_dim"], {**cfg["text_cfg"], "layers": text.depth}).eval()
    ref.load_state_dict({k: v for k, v in sd.items() if k != "logit_scale"})  # Meta's text keys are open_clip's layout
    with torch.device("meta"):
        ours = PEText(text, entry.config.clip_dim).eval()
    zoo_sd = meta_text_to_zoo(sd, text, entry.config.clip_dim)
    assert zoo_sd.pop("logit_scale") == sd["logit_scale"]
    ours.load_state_dict({k: v.contiguous() for k, v in zoo_sd.items()}, assign=True)
    tokens = token_batch(text.context_length, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref(tokens), ours(tokens)
    assert want.abs().mean() > 0.1  # O(1) features: a wrong mapping cannot hide
    assert got.shape == (4, entry.config.clip_dim)
    assert (got - want).abs().max() <= TOL


@functools.cache
def models(variant):
    """zoo's CLIP and open_clip's CustomTextCLIP (visual tower: timm) holding the same Meta-layout random weights."""
    entry = find_entry("core", variant)
    sd = meta_clip_state_dict(entry.config, entry.text, seed=7)
    ours = load_meta_weights(create_clip(entry.name, device="meta"), sd).eval()
    ref = open_clip.create_model(OPEN_CLIP_NAMES[variant], pretrained=None).eval()
    vision = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    state = {f"visual.trunk.{k}": v for k, v in checkpoint_filter_fn(vision, ref.visual.trunk).items()}
    state.update({f"text.{k}": v for k, v in meta_text(sd).items() if k != "logit_scale"})
    state["logit_scale"] = sd["logit_scale"]
    ref.load_state_dict(state)
    return entry, ours, ref


def card_inputs(entry):
    image = torch.rand(1, 3, entry.config.image_size, entry.config.image_size, generator=torch.Generator().manual_seed(1))
    return (image - 0.5) / 0.5, zoo.get_tokenizer(entry.name)(CARD_LABELS)


def test_clip_matches_open_clip():
    """T16 end to end (every size's vision tower and CLIP projection is checked against timm in test_net_vs_timm)."""
    entry, ours, ref = models("T16")
    image, text = card_inputs(entry)
    image = torch.cat([image, image.flip(-1)])
    with torch.no_grad():
        img, want_img = ours.encode_image(image), ref.encode_image(image)
        txt, want_txt = ours.encode_text(text), ref.encode_text(text)
        got, want = ours(image, text), ref(image, text)
    assert img.abs().mean() > 0.1 and txt.abs().mean() > 0.1
    assert (img - want_img).abs().max() <= TOL and (txt - want_txt).abs().max() <= TOL
    assert (got[0] - want[0]).abs().max() <= TOL and (got[1] - want[1]).abs().max() <= TOL
    assert torch.allclose(got[0].norm(dim=-1), torch.ones(2)) and torch.allclose(got[1].norm(dim=-1), torch.ones(3))
    assert got[2] == want[2] == torch.tensor(4.6052).exp()


def test_card_example_probabilities_match_open_clip():
    """Meta's card: image + ["a diagram", "a dog", "a cat"] -> label probabilities."""
    entry, ours, ref = models("T16")
    image, text = card_inputs(entry)
    with torch.no_grad():
        f_img, f_txt, scale = ours(image, text)
        probs = (scale * f_img @ f_txt.T).softmax(dim=-1)
        r_img, r_txt, r_scale = ref(image, text)
        want = (r_scale * r_img @ r_txt.T).softmax(dim=-1)
    assert probs.shape == (1, 3) and torch.allclose(probs.sum(), torch.tensor(1.0))
    assert (probs - want).abs().max() <= TOL


def test_zero_shot_classifier_matches_open_clip():
    entry, ours, ref = models("T16")
    classes, templates = ["cat", "dog", "diagram", "bird"], ["a photo of a {}.", "a drawing of a {}"]
    got = zero_shot_classifier(ours, zoo.get_tokenizer(entry.name), classes, templates=templates)
    want = build_zero_shot_classifier(ref, open_clip.get_tokenizer(OPEN_CLIP_NAMES["T16"]), classes, templates)
    assert got.shape == (entry.config.clip_dim, 4)
    assert (got - want).abs().max() <= TOL
    callables = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of a {c}"]
    assert torch.equal(zero_shot_classifier(ours, zoo.get_tokenizer(entry.name), classes, templates=callables), got)
    image, _ = card_inputs(entry)
    probs = zero_shot_classify(ours, image, got)
    with torch.no_grad():
        ref_probs = (ref.logit_scale.exp() * ref.encode_image(image, normalize=True) @ want).softmax(dim=-1)
    assert probs.shape == (1, 4) and (probs - ref_probs).abs().max() <= TOL


def test_zero_shot_bad_input():
    entry, ours, _ = models("T16")
    tok = zoo.get_tokenizer(entry.name)
    with pytest.raises(ValueError, match="class_names is empty"):
        zero_shot_classifier(ours, tok, [])
    with pytest.raises(ValueError, match="has no '{}'"):
        zero_shot_classifier(ours, tok, ["cat"], templates=["a photo"])
    with pytest.raises(ValueError, match="expected \\[512, classes\\]"):
        zero_shot_classify(ours, torch.zeros(1, 3, 384, 384), torch.zeros(3, 512))
    with pytest.raises(ValueError, match="token length 40"):
        ours.encode_text(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        ours.encode_text(torch.zeros(1, 32))


def test_spatial_and_lang_have_no_clip():
    with pytest.raises(ValueError, match="no text tower"):
        create_clip("rope_i_vit_reg1_l14_pn_npn_avg_c1_pe-spatial", device="meta")
    cfg = find_entry("spatial", "T16").config
    with pytest.raises(ConversionError, match="no text tower"):
        meta_text_to_zoo(meta_vision_state_dict(cfg), find_entry("core", "T16").text, 512)


def test_text_conversion_is_strict():
    entry = find_entry("core", "T16")
    text = dataclasses.replace(entry.text, depth=1)
    sd = meta_clip_state_dict(dataclasses.replace(entry.config, depth=1), text)
    nested = {"state_dict": {f"module.{k}": v for k, v in sd.items()} | {"module.attn_mask": torch.zeros(32, 32)}}
    assert meta_text_to_zoo(nested, text, 512).keys() == meta_text_to_zoo(sd, text, 512).keys()
    for broken, message in [
        ({k: v for k, v in sd.items() if k != "ln_final.bias"}, "missing tensor.*norm_final.bias"),
        (sd | {"transformer.resblocks.0.ls_1.gamma": torch.ones(512)}, "unknown key.*ls_1.gamma"),
        (sd | {"transformer.resblocks.1.ln_1.bias": torch.ones(512)}, "no place for.*blocks.1.norm1.bias"),
        (sd | {"text_projection": torch.ones(512, 1024)}, r"text_projection -> proj.weight: \(1024, 512\)"),
    ]:
        with pytest.raises(ConversionError, match=message):
            meta_text_to_zoo(broken, text, 512)
    with pytest.raises(ConversionError, match="context 72"):
        meta_text_to_zoo(sd, dataclasses.replace(text, context_length=72), 512)


def test_clip_builds_on_meta_device_and_in_bfloat16():
    big = create_clip("rope_i_vit_g14_pn_ap_c1_pe-core", device="meta")
    assert isinstance(big, PECLIP) and big.context_length == 72 and big.text.proj.weight.shape == (1280, 1280)
    entry, ours, _ = models("T16")
    image, text = card_inputs(entry)
    bf = create_clip(entry.name, device="meta").eval()
    bf.load_state_dict({k: v.bfloat16() for k, v in ours.state_dict().items()}, assign=True)
    with torch.no_grad():
        i32, t32, _ = ours(image, text)
        i16, t16, _ = bf(image.bfloat16(), text)
    assert i16.dtype == torch.bfloat16 and t16.dtype == torch.bfloat16
    assert_bfloat16_close(i16, i32)
    assert_bfloat16_close(t16, t32)


# bfloat16 against float32 on unit CLIP features: the measured error is about 0.001 (image) and 0.002 (text)
# per component, cosine above 0.9999; these bounds leave twice that and reject a vector at cosine 0.99.
BF16_MAX_ABS, BF16_MIN_COS = 0.004, 0.9998


def assert_bfloat16_close(got, want):
    got = got.float()
    assert (got - want).abs().max() <= BF16_MAX_ABS
    assert torch.nn.functional.cosine_similarity(got, want).min() >= BF16_MIN_COS


def test_bfloat16_bounds_reject_a_vector_at_cosine_0_99():
    want = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    other = torch.randn(3, 512)
    other = torch.nn.functional.normalize(other - (other * want).sum(-1, keepdim=True) * want, dim=-1)  # orthogonal to want
    got = 0.99 * want + (1 - 0.99**2) ** 0.5 * other  # unit vectors at cosine 0.99
    assert torch.allclose(torch.nn.functional.cosine_similarity(got, want), torch.full((3,), 0.99))
    with pytest.raises(AssertionError):
        assert_bfloat16_close(got.bfloat16(), want)
