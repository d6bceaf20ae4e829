"""zoo's CLIP tokenizer gives the same ids as open_clip's PE-Core tokenizer (an independent oracle)."""

import ast
import functools
import random
import sys
import unicodedata
from pathlib import Path

import open_clip
import pytest
import torch

import zoo
import zoo.clip.tokenizer
from zoo.clip.tokenizer import END, PAD, START, Tokenizer, get_tokenizer

CORPUS = [
    "a photo of a cat.",
    "Hello, World!!! What's up? I'm fine; you'll see... (really) [yes] {no} <tag> #hash @at $5.99 100% a+b=c",
    "DON'T It'S WE'LL THEY'VE she'd",
    "café naïve résumé Ångström Straße ÉCOLE façade",
    "cafe\u0301 with a combining accent",
    "I ❤️ 🐈‍⬛ and 👍🏽 🇫🇷 🏴󠁧󠁢󠁷󠁬󠁳󠁿 😀😃😄",
    "猫が好きです。北京是中国的首都，我爱你！",
    "한국어 텍스트 Привет мир مرحبا بالعالم",
    "   lots   of\t\twhitespace \n\n here \u00a0\u2003 ",
    "",
    "x² ½ ⅻ ① 42 3.14159 1,000,000 ٣٤",
    "ﬁne ﬂuffy ĳs “curly” ‘quotes’",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ",
    "&amp;lt;b&amp;gt; &eacute;t&eacute; Tom &amp; Jerry",
    "\x1b[31mred\x1b[0m ctrl\x00\x07chars\ufeff c1 \x85 \x93quoted\x94",
    "<start_of_text> inside <end_of_text>",
    "snake_case kebab-case CamelCase ſ 'ſ İstanbul ΣΊΣΥΦΟΣ ӏͅ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["a text much longer than the context"] * 20),
]


@functools.cache
def oracle(context_length):
    return open_clip.get_tokenizer("PE-Core-T-16-384", context_length=context_length)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(32)


@pytest.mark.parametrize("ctx", [32, 72])
def test_corpus_matches_open_clip(ctx):
    ours = Tokenizer(ctx)(CORPUS)
    ref = oracle(ctx)(CORPUS)
    assert ours.shape == ref.shape == (len(CORPUS), ctx)
    for text, a, b in zip(CORPUS, ours, ref):
        assert a.tolist() == b.tolist(), repr(text)


def test_random_unicode_matches_open_clip(tok):
    """Seeded random strings over many scripts and symbol blocks (assigned characters; no Latin-1
    range, where ftfy guesses at mojibake, which the zoo deliberately does not reproduce)."""
    blocks = [(0x20, 0x7E), (0x300, 0x52F), (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1FFF),
              (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x4EFF), (0xAC00, 0xACFF), (0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF)]
    rng = random.Random(0)
    texts = []
    for _ in range(500):
        chars = []
        while len(chars) < rng.randint(1, 25):
            lo, hi = rng.choice(blocks)
            c = chr(rng.randint(lo, hi))
            if unicodedata.category(c) != "Cn":
                chars.append(c + (" " if rng.random() < 0.2 else ""))
        texts.append("".join(chars))
    ours, ref = tok(texts, context_length=77), oracle(77)(texts)
    bad = [t for t, a, b in zip(texts, ours, ref) if not torch.equal(a, b)]
    assert not bad, bad[:5]


def test_framing_padding_and_truncation(tok):
    ids = tok(["", "a cat", "word " * 100])
    assert ids.dtype == torch.long and ids.shape == (3, 32)
    assert ids[0, :2].tolist() == [START, END] and (ids[0, 2:] == PAD).all()
    n = len(tok.encode("a cat"))
    assert n == 2 and ids[1, n + 1] == END and (ids[1, n + 2 :] == PAD).all()
    assert ids[2, 0] == START and ids[2, -1] == END and (ids[2, 1:-1] != PAD).all()  # the end token survives the cut
    assert ids.argmax(dim=-1).tolist() == [1, n + 1, 31]  # the text tower pools at the highest id


def test_decode_matches_open_clip(tok):
    for text in CORPUS[:8]:
        ids = tok.encode(text)
        assert tok.decode(ids) == oracle(32).decode(ids).strip()
    assert tok.decode(tok("A Photo of a Café")[0]) == "a photo of a café"  # start, end and padding dropped


def test_get_tokenizer_context_lengths():
    assert get_tokenizer("rope_i_vit_b16_pn_aps_c1_pe-core").context_length == 32
    g = zoo.get_tokenizer("rope_i_vit_g14_pn_ap_c1_pe-core")
    assert g.context_length == 72 and g("a dog").shape == (1, 72)
    with pytest.raises(ValueError, match="no text tower"):
        get_tokenizer("rope_i_vit_reg1_l14_pn_npn_avg_c1_pe-spatial")


def test_imports_only_the_standard_library_and_torch():
    tree = ast.parse(Path(zoo.clip.tokenizer.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - sys.stdlib_module_names == {"torch", "zoo"}
