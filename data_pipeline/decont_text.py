"""Word normalisation and segmentation shared by both decontamination matchers.

This module is the single definition of what a "word" and a "segment" are; the plain-Python
reference (:mod:`ngram_ref`) and the C++ index (:mod:`ngram_index`) both derive from it, the
latter through the character-class table :func:`char_class_table` hands to C++.

Normalisation of a text:

1. ``unicodedata.normalize("NFKC", text).lower()`` — full-width digits and letters, ligatures,
   super/subscripts and compatibility forms fold to their plain forms, then Unicode lowercase.
2. Every code point falls in one of three classes (:func:`char_class`):

   * ``CJK`` — a letter (category ``L*``) in the Han, Hiragana or Katakana blocks. Each such
     character is a word on its own, because Chinese and Japanese do not separate words with
     spaces; a character-level n-gram is what makes CMATH and MGSM-zh matchable.
   * ``WORD`` — any other letter, mark or number (categories ``L*``, ``M*``, ``N*``). Maximal
     runs of these form one word.
   * ``SEP`` — everything else: whitespace, punctuation, symbols (``$ + = \\ ^ { }`` ...),
     controls. Separators are dropped, so ``Janet’s`` / ``Janet's`` / ``JANET'S`` all give
     ``janet s`` and ``\\frac{1}{2}`` gives ``frac 1 2``.

Segments: a document's segments are its lines, ``text.split("\\n")``. NFKC and lowercasing never
create or remove U+000A, so the normalised text splits into the same lines. A document's words
form one stream across its lines, so a benchmark question that a page breaks over several lines
is still found; every line from the one holding a matching n-gram's first word to the one
holding its last word is removed.
"""

from __future__ import annotations

import functools
import re
import unicodedata

SEP, WORD, CJK = 0, 1, 2
MAX_CODE_POINT = 0x110000

# Blocks whose letters are written without spaces between words.
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x3FFFF),  # supplementary ideographic planes (extensions B-I, compatibility)
)


def char_class(ch: str) -> int:
    """Class of one (already normalised) character: ``SEP``, ``WORD`` or ``CJK``."""
    cat = unicodedata.category(ch)
    major = cat[0]
    if major == "L":
        cp = ord(ch)
        for lo, hi in _CJK_RANGES:
            if lo <= cp <= hi:
                return CJK
        return WORD
    if major in ("M", "N"):
        return WORD
    return SEP


@functools.lru_cache(maxsize=1)
def char_class_table() -> bytes:
    """``bytes`` of length 0x110000: ``table[cp]`` is :func:`char_class` of code point ``cp``."""
    return bytes(char_class(chr(cp)) for cp in range(MAX_CODE_POINT))


def _ranges(table: bytes, cls: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for cp, c in enumerate(table):
        if c == cls and start is None:
            start = cp
        elif c != cls and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, len(table) - 1))
    return out


def _char_set(ranges: list[tuple[int, int]]) -> str:
    parts = []
    for lo, hi in ranges:
        a = re.escape(chr(lo))
        parts.append(a if lo == hi else f"{a}-{re.escape(chr(hi))}")
    return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=1)
def word_pattern() -> re.Pattern[str]:
    """Regex finding the words of a normalised text, built from :func:`char_class_table`."""
    table = char_class_table()
    cjk = _char_set(_ranges(table, CJK))
    word = _char_set(_ranges(table, WORD))
    return re.compile(f"{cjk}|{word}+")


def normalize(text: str) -> str:
    """NFKC then lowercase (step 1 above); keeps every ``\\n`` in place."""
    return unicodedata.normalize("NFKC", text).lower()


def words(normalized: str) -> list[str]:
    """Words of an already :func:`normalize`-d text (step 2 above)."""
    return word_pattern().findall(normalized)


def normalized_words(text: str) -> list[str]:
    """``words(normalize(text))``: the word sequence n-grams are taken over."""
    return words(normalize(text))


def split_segments(text: str) -> list[str]:
    """The segments (lines) of a document, in order; ``"\\n".join`` gives the text back."""
    return text.split("\n")
