"""The text tokenizer PE-Core was trained with: OpenAI CLIP's byte-level BPE, offline.

Pipeline (exactly CLIP's): clean the text (``ftfy.fix_text``, HTML entities unescaped twice, whitespace
runs collapsed, lower-cased) -> split into words, numbers (one digit each) and punctuation runs with
CLIP's ``regex`` pattern -> bytes -> BPE merges -> ids, framed by start 49406 and end 49407, padded
with 0 and truncated so the end token is kept.

The merge list ships inside the package (``bpe_simple_vocab_16e6.txt.gz``, OpenAI's MIT
license in ``bpe_simple_vocab_16e6.LICENSE``); nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Sequence
from importlib import resources

import regex
import torch

START, END, PAD = 49406, 49407, 0
SPECIALS = ("<start_of_text>", "<end_of_text>")
NUM_MERGES = 49152 - 256 - 2  # merges CLIP uses from the file (the rest of it is unused)


def clean_text(text: str) -> str:
    """CLIP's text cleaning: ``ftfy.fix_text``, HTML unescaped twice, whitespace collapsed, lower-cased."""
    import ftfy  # on first use: keeps ``import zoo`` light

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


@functools.cache
def _word_pattern() -> regex.Pattern[str]:
    """CLIP's split, case-insensitive: specials | contractions | letters+ | one number | other non-space+."""
    specials = "|".join(regex.escape(s) for s in SPECIALS)
    return regex.compile(
        rf"{specials}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
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
        self.context_length = _check_context_length(context_length)
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
        _check_texts([text])
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

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids [N, context_length]: start, BPE ids, end, zero padding; long texts are cut, keeping the end token."""
        texts = _check_texts(texts)
        ctx = self.context_length if context_length is None else _check_context_length(context_length)
        out = torch.full((len(texts), ctx), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [START, *self.encode(text)][: ctx - 1] + [END]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def _check_context_length(context_length: object) -> int:
    if isinstance(context_length, bool) or not hasattr(context_length, "__index__"):
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__} {context_length!r}")
    n = context_length.__index__()
    if n < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {n}")
    return n


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("the tokenizer takes text, not bytes: decode it first, e.g. data.decode('utf-8')")
    if not isinstance(texts, Sequence):
        raise TypeError(f"the tokenizer takes a str or a list of str, got {type(texts).__name__} {texts!r:.60}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            hint = ": decode it first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""
            raise TypeError(f"the tokenizer takes a str or a list of str, but item {i} is {type(text).__name__} {text!r:.60}{hint}")
    return list(texts)


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


__all__ = ["Tokenizer", "get_tokenizer", "clean_text", "START", "END", "PAD"]
