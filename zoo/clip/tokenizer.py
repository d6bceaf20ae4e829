"""The text tokenizer PE-Core was trained with: OpenAI CLIP's byte-level BPE, offline, standard library only.

Pipeline (as CLIP's): clean the text (the deterministic repairs of ``ftfy.fix_text``, HTML
entities unescaped twice, whitespace runs collapsed, lower-cased) -> split into words,
numbers (one digit each) and punctuation runs -> bytes -> BPE merges -> ids, framed by
start 49406 and end 49407, padded with 0 and truncated so the end token is kept.

The merge list ships inside the package (``bpe_simple_vocab_16e6.txt.gz``, OpenAI's MIT
license in ``bpe_simple_vocab_16e6.LICENSE``); nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import html
import re
import unicodedata
from importlib import resources

import torch

START, END, PAD = 49406, 49407, 0
SPECIALS = ("<start_of_text>", "<end_of_text>")
NUM_MERGES = 49152 - 256 - 2  # merges CLIP uses from the file (the rest of it is unused)

# The deterministic repairs of ftfy.fix_text (its mojibake detection is not reproduced).
_LIGATURES = {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
}
_CONTROL = dict.fromkeys([*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)])
_C1 = re.compile("[\x80-\x9f]")
_ANSI = re.compile(r"\x1b\[[\d;]*[a-zA-Z]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")


@functools.cache
def _forms() -> dict[int, str]:
    """Latin ligatures split; full- and halfwidth forms (and the ideographic space) to standard width."""
    table = {ord(k): v for k, v in _LIGATURES.items()}
    table[0x3000] = " "
    for cp in range(0xFF01, 0xFFF0):
        norm = unicodedata.normalize("NFKC", chr(cp))
        if norm != chr(cp):
            table[cp] = norm
    return table


def _c1_as_windows_1252(m: re.Match[str]) -> str:
    try:
        return m.group(0).encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are unassigned in cp1252: kept as they are
        return m.group(0)


def _join_surrogates(m: re.Match[str]) -> str:
    return m.group(0).encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def fix_text(text: str) -> str:
    """ftfy's deterministic fixes, repeated until nothing changes: C1 controls read as Windows-1252,
    Latin ligatures split, character width, curly quotes straightened, surrogates joined, terminal
    escapes and control characters removed, NFC."""
    while True:
        before = text
        text = _C1.sub(_c1_as_windows_1252, text).translate(_forms())
        text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
        text = _SURROGATE.sub("\ufffd", _SURROGATE_PAIR.sub(_join_surrogates, text))
        text = _ANSI.sub("", text).translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def clean_text(text: str) -> str:
    """CLIP's text cleaning: fixes, HTML unescaped twice, whitespace collapsed, lower-cased."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    """CLIP's split: specials | contractions | letters+ | one number | other non-space+.

    ``re`` has no ``\\p{..}``, so Unicode letters (L*) and numbers (N*) are collected from
    ``unicodedata``. CLIP matches case-insensitively, which also keeps the few non-letters whose
    case partner is a letter (U+0345) out of the "other" run: such characters match nothing.
    """
    ranges: dict[str, list[tuple[int, int]]] = {"L": [], "N": [], "case": []}
    for cp in range(0x110000):
        c = chr(cp)
        major = unicodedata.category(c)[0]
        if major not in "LN":
            partner = c.upper()
            major = "case" if partner != c and len(partner) == 1 and unicodedata.category(partner)[0] == "L" else ""
        if major:
            r = ranges[major]
            if r and r[-1][1] == cp - 1:
                r[-1] = (r[-1][0], cp)
            else:
                r.append((cp, cp))
    letters, numbers, partners = (_char_class(ranges[k]) for k in ("L", "N", "case"))
    specials = "|".join(re.escape(s) for s in SPECIALS)
    return re.compile(
        rf"{specials}|(?i:'s|'t|'re|'ve|'m|'ll|'d)|[{letters}]+|[{numbers}]|[^\s{letters}{numbers}{partners}]+"
    )


@functools.cache
def _byte_symbols() -> tuple[list[str], list[int]]:
    """CLIP's reversible byte -> printable character table (indexed by byte) and the bytes that stand for themselves."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return [table[b] for b in range(256)], printable


class Tokenizer:
    """OpenAI CLIP's BPE tokenizer: ``tokenizer(texts)`` -> LongTensor [N, context_length]."""

    def __init__(self, context_length: int) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        self.context_length = context_length
        symbols, printable = _byte_symbols()
        self._byte_symbol = symbols
        with gzip.open(resources.files("zoo.clip").joinpath("bpe_simple_vocab_16e6.txt.gz").open("rb")) as f:
            lines = f.read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        order = [chr(b) for b in printable] + [symbols[b] for b in range(256) if b not in set(printable)]
        vocab = order + [s + "</w>" for s in order] + ["".join(m) for m in merges] + list(SPECIALS)
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.decoder = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, list[int]] = {}
        if (self.encoder[SPECIALS[0]], self.encoder[SPECIALS[1]], len(vocab)) != (START, END, 49408):
            raise RuntimeError("the shipped BPE vocabulary is not CLIP's (49408 tokens, start 49406, end 49407)")

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, NUM_MERGES))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after cleaning, without start/end tokens."""
        ids: list[int] = []
        for piece in _word_pattern().findall(clean_text(text)):
            if piece in SPECIALS:
                ids.append(self.encoder[piece])
            else:
                ids.extend(self._bpe("".join(self._byte_symbol[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of BPE ids (start, end and padding tokens dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        byte_of = {s: b for b, s in enumerate(self._byte_symbol)}
        data = bytearray()
        for i in ids:
            if i in (START, END, PAD):
                continue
            token = self.decoder[i]
            word_end = token.endswith("</w>")
            data += bytes(byte_of[c] for c in token.removesuffix("</w>")) + (b" " if word_end else b"")
        return data.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids [N, context_length]: start, BPE ids, end, zero padding; long texts are cut, keeping the end token."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        out = torch.full((len(texts), ctx), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [START, *self.encode(text)][: ctx - 1] + [END]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer of a PE-Core registry entry (its context length: 32, or 72 for G14)."""
    from zoo.registry import get_entry

    entry = get_entry(name)
    if entry.text is None:
        raise ValueError(
            f"{name} has no text tower (only PE-Core checkpoints are CLIP models); "
            "choose one of zoo.list_pretrained_models('*pe-core')"
        )
    return Tokenizer(entry.text.context_length)


__all__ = ["Tokenizer", "get_tokenizer", "clean_text", "fix_text", "START", "END", "PAD"]
