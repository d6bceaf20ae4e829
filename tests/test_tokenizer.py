"""zoo's CLIP tokenizer gives the same ids as open_clip's PE-Core tokenizer (an independent oracle)."""

import functools
import html.entities
import random
import tomllib
from pathlib import Path

import ftfy
import numpy as np
import open_clip
import pytest
import regex
import torch

import zoo
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


PLANES = (0, 1, 2, 3, 14, 15, 16)  # every plane with assigned code points (15 and 16: private use)
WORDS = ["photo", "cat", "Dog", "DON'T", "it's", "we'll", "they've", "I'm", "she'd", "you're", "café", "naïve",
         "Straße", "Ångström", "日本語", "北京", "한국어", "Привет", "مرحبا", "😀", "👍🏽", "🇫🇷", "ﬁne", "x²", "½", "42"]


def assigned_by_plane() -> dict[int, list[int]]:
    """Assigned code points of each plane, by the newest Unicode tables at hand (regex's, not Python's)."""
    out = {}
    for p in PLANES:
        block = "".join(chr(c) for c in range(p << 16, (p + 1) << 16) if not 0xD800 <= c <= 0xDFFF)
        out[p] = [ord(c) for c in regex.findall(r"\p{Assigned}", block)]
    return out


def fuzz_corpus(n_per_kind: int = 500, seed: int = 0) -> list[str]:
    """Seeded strings of five kinds: any assigned character of any plane, Latin-1 (C0/C1 controls
    included), mojibake (UTF-8 read as Latin-1/cp1252, once or twice), nested HTML entities, ASCII words."""
    rng = random.Random(seed)
    assigned = assigned_by_plane()
    entities = sorted(html.entities.html5)

    def any_plane() -> str:
        chars = []
        for _ in range(rng.randint(1, 24)):
            chars.append(chr(rng.choice(assigned[rng.choice(PLANES)])))
            if rng.random() < 0.2:
                chars.append(rng.choice(" \t\n\u00a0\u3000"))
            if rng.random() < 0.1:
                chars.append(rng.choice(WORDS))
        return "".join(chars)

    def latin1() -> str:
        return "".join(chr(rng.randint(0, 0xFF)) if rng.random() < 0.6 else rng.choice(WORDS) + " " for _ in range(rng.randint(1, 20)))

    def mojibake() -> str:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(1, 2)):
            text = text.encode("utf-8").decode(rng.choice(["latin-1", "cp1252"]), errors=rng.choice(["replace", "ignore"]))
        return rng.choice(["", "the ", "a photo of "]) + text + rng.choice(["", ".", " and more"])

    def nested_html() -> str:
        parts = []
        for _ in range(rng.randint(1, 8)):
            ent = rng.choice([f"&{rng.choice(entities)}", f"&#{rng.randint(32, 0x1FAFF)};", f"&#x{rng.randint(32, 0x1FAFF):x};", "&amp;", "&lt;b&gt;"])
            for _ in range(rng.randint(0, 3)):
                ent = ent.replace("&", "&amp;")
            parts.append(ent + rng.choice(["", " ", " tom ", "x"]) + (rng.choice(WORDS) if rng.random() < 0.5 else ""))
        return rng.choice(["", "", "<i> ", "a<b "]) + "".join(parts)  # a literal "<" turns ftfy's unescaping off

    def ascii_words() -> str:
        return "".join(rng.choice([rng.choice(WORDS), chr(rng.randint(32, 126)), " ", "'s", "'LL", "  "]) for _ in range(rng.randint(1, 30)))

    return [kind() for kind in (any_plane, latin1, mojibake, nested_html, ascii_words) for _ in range(n_per_kind)]


def test_fuzz_corpus_matches_open_clip_exactly():
    """2,500 seeded strings; the zoo's earlier standard-library tokenizer differed on 1,081 of them."""
    texts = fuzz_corpus()
    used = {ord(c) >> 16 for t in texts for c in t}
    assert used == set(PLANES)  # the corpus reaches every plane with assigned characters
    assert any("Ã" in t for t in texts) and any("&amp;amp;amp;" in t for t in texts) and any("<i> &amp;" in t for t in texts)
    ours, ref = Tokenizer(77)(texts), oracle(77)(texts)
    bad = [t for t, a, b in zip(texts, ours, ref) if not torch.equal(a, b)]
    assert not bad, (len(bad), bad[:5])


@pytest.mark.parametrize("text", ["cafÃ©", "&amp;amp;amp; tom", "kawi\U00011f04\U00011f05! nag\U0001e4d0.", "ÃƒÂ©tÃƒÂ©"])
def test_known_differences_of_the_old_tokenizer(tok, text):
    """Mojibake, triple-escaped HTML and letters newer than Python's Unicode tables (Unicode 15/16)."""
    assert tok(text).tolist() == oracle(32)(text).tolist()


@pytest.mark.parametrize(("texts", "match"), [
    (None, "got NoneType None"), (123, "got int 123"), (b"a cat", "not bytes: decode it first"),
    (["a cat", None], "item 1 is NoneType"), ([b"x"], "item 0 is bytes.*decode it first"),
])
def test_bad_texts_are_named(tok, texts, match):
    with pytest.raises(TypeError, match=match):
        tok(texts)


def test_bad_context_lengths_are_refused(tok):
    for ctx in (0, 1, -3):
        with pytest.raises(ValueError, match=f"context_length must be at least 2.*got {ctx}"):
            tok("a cat", context_length=ctx)
        with pytest.raises(ValueError, match="at least 2"):
            Tokenizer(ctx)
    for ctx in (32.0, "32", True):
        with pytest.raises(TypeError, match="context_length must be an int"):
            tok("a cat", context_length=ctx)
    assert tok("a cat", context_length=np.int64(5)).shape == (1, 5)


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


def test_pyproject_pins_the_ftfy_major_in_use():
    """ftfy's heuristics change between major versions: the runtime dependency is pinned to one."""
    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("ftfy"))
    major = int(ftfy.__version__.split(".")[0])
    assert f">={major}" in spec and f"<{major + 1}" in spec, spec
    assert any(d.startswith("regex") for d in deps)
