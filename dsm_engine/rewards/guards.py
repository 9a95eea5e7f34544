"""Screens that run on answer text before anything is evaluated.

- ``unsafe_reason``: why an answer must never reach SymPy, or None. Rejected by size, never
  evaluated: nested powers (``9^{9^{9}}``, ``(10^{10})^{10^{10}}``), an exponent whose
  literals multiply past ``max_exponent``, a factorial past ``max_factorial``, ``1e999``
  past ``max_scientific_exponent``, digit runs past ``max_digits``, nesting past
  ``max_depth``; and a literal division by zero (``\\frac{1}{0}``), which equals no number.
- ``is_closed_numeric``: the text is a number-valued expression (digits, operators,
  ``\\frac``, ``\\sqrt``, ``\\pi``, functions of numbers) with no free variable, no word and
  no second value (``1, 2``; ``9 9``); a number reference only ever equals such a text.
- ``hedges`` / ``relations``: qualifier words (``or``, ``at least``, ``约``) and relation
  signs (``=``, ``\\le``, ``\\in``) of an answer; a prediction may use only those its
  reference uses (``18 \\text{ or more}``, ``x+1 = 18`` and ``19 = 18`` are not 18).

Everything here is linear-time string scanning over at most ``max_chars`` characters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dsm_engine.rewards.numbers import HEDGE_WORDS, HEDGE_ZH, to_halfwidth

__all__ = [
    "SizeLimits",
    "bases",
    "hedges",
    "is_closed_numeric",
    "juxtaposed",
    "nesting_depth",
    "relations",
    "strip_assignment",
    "text_words",
    "unsafe_reason",
]


@dataclass(frozen=True)
class SizeLimits:
    """Largest answers that may be evaluated.

    max_chars: longer texts are never evaluated (string comparison only).
    max_depth: deepest ``{[(`` nesting.
    max_exponent: largest product of the integer literals in one exponent, times those of
        the exponents inside its base (``(2^{100})^{100}`` counts 10,000).
    max_factorial: largest product of the literals under one ``!``.
    max_digits: longest run of digits.
    max_scientific_exponent: largest ``n`` in ``1e{n}``.
    """

    max_chars: int = 2000
    max_depth: int = 16
    max_exponent: int = 10_000
    max_factorial: int = 1000
    max_digits: int = 400
    max_scientific_exponent: int = 100


DEFAULT_LIMITS = SizeLimits()

_DIGITS_RE = re.compile(r"\d+")
_SCIENTIFIC_RE = re.compile(r"\d\.?\d*\s*[eE]\s*[-+]?\s*(\d+)")
_ZERO = r"[-+]?\s*0+(?:\.0*)?"
_DIVISION_BY_ZERO_RE = re.compile(
    rf"\\[dt]?frac\s*(?:\{{[^{{}}]*\}}|\d)\s*(?:\{{\s*{_ZERO}\s*\}}|0)"
    rf"|(?:/|÷|\\div)\s*(?:\(\s*{_ZERO}\s*\)|{_ZERO})(?![\d.])"
)


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``{[(`` brackets in ``text``."""
    depth = best = 0
    for ch in text:
        if ch in "{[(":
            depth += 1
            best = max(best, depth)
        elif ch in "}])":
            depth = max(0, depth - 1)
    return best


def _group_after(text: str, i: int) -> tuple[str, int]:
    """The operand that starts at ``text[i]`` (a braced/parenthesised group, a digit run, a
    ``\\command`` or one character) and the index just past it."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return "", i
    if text[i] in "{(":
        close = {"{": "}", "(": ")"}[text[i]]
        depth = 0
        for j in range(i, len(text)):
            depth += (text[j] == text[i]) - (text[j] == close)
            if depth == 0:
                return text[i + 1 : j], j + 1
        return text[i + 1 :], len(text)
    run = re.match(r"[-+]?\d[\d.]*|\\[A-Za-z]+", text[i:])
    operand = run.group(0) if run else text[i]
    return operand, i + len(operand)


def _group_before(text: str, j: int) -> str:
    """The operand that ends just before ``text[j]`` (a group, or a run of digits/letters)."""
    i = j - 1
    while i >= 0 and text[i] == " ":
        i -= 1
    if i < 0:
        return ""
    if text[i] in "})]":
        opener = {"}": "{", ")": "(", "]": "["}[text[i]]
        depth = 0
        for k in range(i, -1, -1):
            depth += (text[k] == text[i]) - (text[k] == opener)
            if depth == 0:
                return text[k + 1 : i]
        return text[:i]
    k = i
    while k >= 0 and (text[k].isalnum() or text[k] == "."):
        k -= 1
    return text[k + 1 : i + 1]


def _literal_product(text: str) -> float:
    product = 1.0
    for run in _DIGITS_RE.findall(text):
        if len(run) > 9:
            return math.inf
        product *= max(1, int(run))
    return product


def _largest_power(text: str) -> float:
    """Largest effective exponent in ``text``; inf for a power tower or a factorial in an
    exponent."""
    best = 1.0
    for match in re.finditer(r"\^", text):
        exponent, end = _group_after(text, match.end())
        if "^" in exponent or "!" in exponent or text[end:].lstrip().startswith("^"):
            return math.inf  # a tower: 9^{9^9}, or 9^9^9 read right to left
        base = _group_before(text, match.start())
        inner = _largest_power(base) if "^" in base else 1.0
        best = max(best, _literal_product(exponent) * inner)
    return best


def _largest_factorial(text: str) -> float:
    best = 0.0
    for match in re.finditer(r"(?<!\\)!(?!=)", text):
        operand = _group_before(text, match.start())
        if "^" in operand or "!" in operand or text[: match.start()].rstrip().endswith("!"):
            return math.inf  # (n!)! and n!! grow past any limit
        best = max(best, _literal_product(operand))
    return best


def unsafe_reason(text: str, limits: SizeLimits = DEFAULT_LIMITS) -> str | None:
    """Why ``text`` must not be evaluated (too large, or a division by zero), else None."""
    if len(text) > limits.max_chars:
        return "too long"
    if nesting_depth(text) > limits.max_depth:
        return "nested too deep"
    s = to_halfwidth(text).replace("**", "^")
    if any(len(run) > limits.max_digits for run in _DIGITS_RE.findall(s)):
        return "too many digits"
    for match in _SCIENTIFIC_RE.finditer(s):
        if len(match.group(1)) > 6 or int(match.group(1)) > limits.max_scientific_exponent:
            return "exponent overflow"
    if _DIVISION_BY_ZERO_RE.search(s):
        return "division by zero"
    if "^" in s and _largest_power(s) > limits.max_exponent:
        return "power too large"
    if "!" in s and _largest_factorial(s) > limits.max_factorial:
        return "factorial too large"
    return None


# --------------------------------------------------------------------------- token classes

_ASSIGNMENT_RE = re.compile(r"^\s*[A-Za-z](?:_\{?\w{1,3}\}?)?\s*(?:=|\\in(?![A-Za-z]))\s*")
_CLOSED_COMMANDS = frozenset(
    [
        "frac",
        "dfrac",
        "tfrac",
        "sqrt",
        "cdot",
        "times",
        "div",
        "pi",
        "left",
        "right",
        "circ",
        "log",
        "ln",
        "lg",
        "sin",
        "cos",
        "tan",
        "sec",
        "csc",
        "cot",
        "arcsin",
        "arccos",
        "arctan",
        "exp",
        "binom",
        "dbinom",
        "tbinom",
        "lfloor",
        "rfloor",
        "lceil",
        "rceil",
        "quad",
        "qquad",
        "degree",
    ]
)
_CLOSED_CHARS = frozenset("0123456789.+-*/^_()[]{}!| π√×÷·−%$")
_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\\.|.", re.DOTALL)
_THOUSANDS_RE = re.compile(r"(?<=\d)(?:,|\{,\}|,\\!)(?=\d{3}(?!\d))")
_SIDE_BY_SIDE_RE = re.compile(r"(?<![_^\d])\d+\s+\d")  # not "\\log_2 8"
_SHORT_FRAC_RE = re.compile(r"\\[dt]?frac\s*\d\s*\d")
_SPACING_RE = re.compile(r"\\[,;: ]|\\quad|\\qquad|~")


def strip_assignment(text: str) -> str:
    """``x = 3`` -> ``3`` and ``x \\in [1, 2]`` -> ``[1, 2]`` (one single-letter variable);
    a second ``=`` keeps the text whole (``x = 3 = y``)."""
    match = _ASSIGNMENT_RE.match(text)
    if match is None or "=" in text[match.end() :]:
        return text
    return text[match.end() :]


def juxtaposed(text: str) -> bool:
    """Whether ``text`` writes two numbers side by side (``9 9``, ``1\\,8``, ``1 234 + 1``),
    which math-verify reads as a sum; a lone spaced number (``10 000``) is ``read_number``'s."""
    s = _SPACING_RE.sub(" ", to_halfwidth(text).replace("\\!", ""))
    s = _SHORT_FRAC_RE.sub("", s)  # "\\frac 1 2" is one half
    return _SIDE_BY_SIDE_RE.search(s) is not None


def is_closed_numeric(text: str) -> bool:
    """Whether ``text`` is one number-valued expression: no variable, word or list."""
    if juxtaposed(text):
        return False
    s = strip_assignment(to_halfwidth(text)).replace("\\!", "")
    s = _SPACING_RE.sub(" ", s).replace("\\%", "%").replace("\\$", "$")
    s = _THOUSANDS_RE.sub("", s)
    if not any(ch.isdigit() for ch in s) and "\\pi" not in s and "π" not in s:
        return False
    for token in _TOKEN_RE.findall(s):
        if token.startswith("\\") and len(token) > 2:
            if token[1:] not in _CLOSED_COMMANDS:
                return False
        elif token not in _CLOSED_CHARS and token not in ("\\%", "\\$"):
            return False
    return True


_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]+")


def hedges(text: str) -> frozenset[str]:
    """Qualifier words of ``text`` (``or``, ``more``, ``约``, ``以上``, ...), lower-cased."""
    words = {w.lower() for w in _WORD_RE.findall(text)} & HEDGE_WORDS
    return frozenset(words | {h for h in HEDGE_ZH if h in text})


_BASE_RE = re.compile(r"(?<![A-Za-z\\])\d[\d.]*_\{?\s*(\d+)\s*\}?")


def bases(text: str) -> tuple[str, ...]:
    """Number bases written as subscripts (``7602_8``, ``141_{13}``), in order: math-verify
    drops them, so ``7602_9`` would equal ``7602_8``."""
    return tuple(_BASE_RE.findall(text))


_TEXT_RE = re.compile(r"\\(?:text|textrm|textbf|textit|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")


def text_words(text: str) -> frozenset[str]:
    """Lower-cased words written as text (``\\text{...}``, ``\\mathrm{...}``): math-verify
    drops many of them, so a prediction may only use words its reference uses."""
    return frozenset(
        w.lower()
        for content in _TEXT_RE.findall(text)
        for w in re.findall(r"[A-Za-z]{2,}", content)
    )


_RELATIONS = {
    "=": "=",
    "<": "<",
    ">": ">",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "≈": "~",
    "\\le": "<=",
    "\\leq": "<=",
    "\\leqslant": "<=",
    "\\lt": "<",
    "\\ge": ">=",
    "\\geq": ">=",
    "\\geqslant": ">=",
    "\\gt": ">",
    "\\ne": "!=",
    "\\neq": "!=",
    "\\approx": "~",
    "\\sim": "~",
    "\\simeq": "~",
    "\\equiv": "==",
    "\\in": "in",
    "\\to": "->",
    "\\rightarrow": "->",
    "\\Rightarrow": "=>",
    "\\implies": "=>",
    "\\iff": "<=>",
}


def relations(text: str) -> frozenset[str]:
    """Relation signs of ``text`` after a leading ``x =``/``x \\in`` (canonical spelling)."""
    found = set()
    for token in _TOKEN_RE.findall(strip_assignment(to_halfwidth(text))):
        if token in _RELATIONS:
            found.add(_RELATIONS[token])
    return frozenset(found)
