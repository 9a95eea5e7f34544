"""Strict reading of numeric final answers: the whole answer is one number, or it is None.

``read_number(text)`` accepts a text only when all of it spells one number, and returns its
exact value (a ``Fraction``; nothing is evaluated, no float is involved). Accepted forms:

- integers and decimals, with thousands separators (``1,234``, ``1{,}234``, ``10\\,000``,
  ``10 000``: groups of three digits only), a sign (``-``, ``−``, ``+``) and a trailing ``.``;
- fractions of integers or decimals: ``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``, ``\\frac{-3}{4}``;
- scientific notation with a bounded exponent: ``1.5e3``, ``1.5 \\times 10^{3}``
  (``|exponent| <= MAX_EXPONENT``; ``1e999999999`` is an overflow, never a number);
- Chinese numerals: ``十八``, ``两千零五``, ``负三``, ``三点五``, ``三分之一``, ``百分之四十``,
  and Arabic numbers with ``万``/``亿`` (``3.5万``);
- decoration that does not change the value: ``$``/``\\$`` and other currency signs, one
  ``x =`` assignment prefix, outer braces or parentheses, ``\\left``/``\\right``, LaTeX
  spacing, degrees, and a trailing unit (``5\\text{ cm}``, ``18 apples``, ``18个``, ``km/h``):
  English words of two or more letters (at most four words), or CJK text;
- a percent sign (``%``, ``\\%``, ``percent``), kept as ``NumberAnswer.percent``.

Refused (None): anything with a free variable (``x+18``, ``18x``), a second number
(``18, 19``, ``1 8``), an operator, a hedge in the unit (``18 or more``, ``18以上``,
``about 18``), a zero denominator, more than ``MAX_DIGITS`` digits, or an overflowing exponent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "HEDGE_WORDS",
    "HEDGE_ZH",
    "MAX_DIGITS",
    "MAX_EXPONENT",
    "NumberAnswer",
    "chinese_to_number",
    "read_number",
    "to_halfwidth",
]

MAX_DIGITS = 400  # longer digit strings are not final answers (and int() has a 4300-digit cap)
MAX_EXPONENT = 100  # largest |n| of 1e{n} / 10^{n} read as a plain number

# Words that qualify or hedge a number ("18 or more", "about 18") and sentence words: a unit
# tail holding one of them is no unit, and an answer holding one its reference lacks is wrong.
HEDGE_WORDS = frozenset(
    [
        "or",
        "and",
        "to",
        "more",
        "less",
        "least",
        "most",
        "than",
        "approximately",
        "approx",
        "about",
        "around",
        "roughly",
        "nearly",
        "almost",
        "between",
        "not",
        "no",
        "maybe",
        "perhaps",
        "either",
        "neither",
        "nor",
        "except",
        "over",
        "under",
        "above",
        "below",
        "up",
        "plus",
        "minus",
        "times",
        "divided",
        "is",
        "are",
        "was",
        "were",
        "be",
        "if",
        "else",
        "but",
        "then",
        "otherwise",
        "wrong",
        "incorrect",
        "false",
        "true",
        "unknown",
        "undefined",
        "impossible",
        "none",
        "infinity",
        "infinite",
        "nan",
        "inf",
    ]
)
HEDGE_ZH = (
    "或",
    "到",
    "至",
    "以上",
    "以下",
    "多",
    "余",
    "约",
    "左右",
    "不",
    "和",
    "与",
    "及",
    "超过",
    "以内",
    "以外",
    "还是",
    "错",
    "非",
    "无",
    "未",
)


@dataclass(frozen=True)
class NumberAnswer:
    """One number read from an answer.

    value: exact value as written (``25%`` -> 25, with ``percent`` set).
    percent: a percent sign was written.
    text: canonical ASCII spelling (``-1234.50``, ``3/4``, ``27.3%``): separators, currency
        and units dropped, decimal places kept (rounding checks count them).
    unit: the unit words, lower-cased without spaces or dots (``""`` when none).
    """

    value: Fraction
    percent: bool
    text: str
    unit: str = ""


def to_halfwidth(text: str) -> str:
    """Map full-width ASCII forms (``１２．５``, ``，``, ``－``) to ASCII; other text unchanged."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        elif ch == "\u3000":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


_CHINESE_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CHINESE_UNITS = {"十": 10, "百": 100, "千": 1000}
_CHINESE_BIG_UNITS = {"万": 10_000, "亿": 100_000_000}


def chinese_to_number(text: str) -> int | None:
    """Convert a Chinese numeral (``十八``, ``两千零五``, ``三万五千``) to an int, else None."""
    if not text or any(
        ch not in _CHINESE_DIGITS and ch not in _CHINESE_UNITS and ch not in _CHINESE_BIG_UNITS
        for ch in text
    ):
        return None
    total = 0  # finished big-unit sections
    section = 0  # value below the current big unit
    digit: int | None = None
    for ch in text:
        if ch in _CHINESE_DIGITS:
            digit = _CHINESE_DIGITS[ch]
        elif ch in _CHINESE_UNITS:
            # "十八" means 18: a unit without a digit before it counts once
            section += (1 if digit is None else digit) * _CHINESE_UNITS[ch]
            digit = None
        else:
            section += digit or 0
            total = (total + section) * _CHINESE_BIG_UNITS[ch]
            section, digit = 0, None
    return total + section + (digit or 0)


def _chinese_value(text: str) -> Fraction | None:
    """``十八``, ``三点五`` (decimal point 点) or ``三分之一`` (denominator first) -> value."""
    if "分之" in text:
        denominator, _, numerator = text.partition("分之")
        d, n = _chinese_value(denominator), _chinese_value(numerator)
        return None if d is None or n is None or d == 0 else n / d
    whole, dot, decimals = text.partition("点")
    value = chinese_to_number(whole)
    if value is None:
        return None
    if not dot:
        return Fraction(value)
    if not decimals or any(ch not in _CHINESE_DIGITS for ch in decimals):
        return None
    return Fraction(f"{value}." + "".join(str(_CHINESE_DIGITS[ch]) for ch in decimals))


# --------------------------------------------------------------------------- cleaning

_TEXT_WRAPPER_RE = re.compile(
    r"\\(?:text|textrm|textbf|textit|mathrm|mathbf|mbox|rm)\s*\{([^{}]*)\}"
)
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
_SPACE_COMMANDS_RE = re.compile(r"\\[,;: ]|\\quad|\\qquad|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")


def _clean(text: str) -> str:
    """Drop what never changes a number: math-mode dollars, spacing, \\left, text wrappers."""
    s = to_halfwidth(text).replace("\u2212", "-").replace("\\dfrac", "\\frac")
    s = s.replace("\\tfrac", "\\frac").replace("{,}", ",").replace("\\!", "")
    s = s.replace("\\$", "$").replace("$", " ").replace("\\%", "%")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _SPACE_COMMANDS_RE.sub(" ", s)
    s = _DEGREES_RE.sub(" ", s)
    s = _TEXT_WRAPPER_RE.sub(r" \1 ", s)
    s = " ".join(s.split())
    s = s.rstrip("。.").strip()
    # "{18}" and "(18)" are 18; "(1,234)" stays a pair, not one thousand two hundred ...
    while (
        len(s) >= 2
        and _balanced(s[1:-1])
        and ((s[0], s[-1]) == ("{", "}") or ((s[0], s[-1]) == ("(", ")") and "," not in s))
    ):
        s = s[1:-1].strip()
    return s


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"{": 1, "(": 1, "}": -1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# --------------------------------------------------------------------------- grammar

_DECIMAL = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?: \d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_FRAC_PART = r"-?\d+(?:\.\d+)?"
_ZH_NUM = "零〇一二两三四五六七八九十百千万亿"
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff"
_WORD = r"[A-Za-z]{2,}\.?|[A-Za-z](?:\.[A-Za-z])+\.?|[A-Za-z]{2,}/[A-Za-z]{1,4}"
_NUMBER_RE = re.compile(
    r"(?:(?P<var>[A-Za-z](?:_\{?\w{1,3}\}?)?)\s*=\s*)?"
    r"(?P<cur>[$€£¥￥])?\s*(?P<sign>[-+])?\s*[$€£¥￥]?\s*"
    r"(?:"
    rf"\\frac\s*(?:\{{\s*(?P<fn>{_FRAC_PART})\s*\}}|(?P<fn1>\d))"
    rf"\s*(?:\{{\s*(?P<fd>{_FRAC_PART})\s*\}}|(?P<fd1>\d))"
    rf"|(?P<sn>\d+)\s*/\s*(?P<sd>\d+)"
    rf"|(?P<dec>{_DECIMAL})"
    r"(?:[eE](?P<exp>[-+]?\d+)|\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*\{?\s*(?P<exp10>[-+]?\d+)\s*\}?)?"
    r"(?P<zhbig>[万亿](?![米克瓦]))?"
    rf"|(?P<zhpct>百分之)?(?P<zh>负?[{_ZH_NUM}]+(?:点[{_ZH_NUM}]+)?(?:分之[{_ZH_NUM}]+)?)"
    r")"
    r"\s*(?P<pct>%|percent\b|per cent\b)?"
    rf"\s*(?P<unit>(?:(?:{_WORD}|[{_CJK}]+)\s*){{1,4}}(?:\^\s*\{{?[23]\}}?|²|³)?)?"
)


def _unit_of(raw: str, glued: bool) -> str | None:
    """Normalised unit words, or None when the tail is no unit (a hedge, a variable)."""
    tail = raw.strip()
    if not tail:
        return ""
    words = re.findall(r"[A-Za-z]+", tail)
    if any(w.lower() in HEDGE_WORDS for w in words) or any(h in tail for h in HEDGE_ZH):
        return None
    if any(ch in _ZH_NUM for ch in tail) and not tail.startswith(("千米", "千克", "千瓦")):
        return None  # "18千" is no unit: a Chinese multiplier after an Arabic number
    if glued and tail[0].isascii() and tail[0].isalpha() and len(words[0]) < 2:
        return None
    return re.sub(r"[\s.]", "", tail).lower()


def read_number(text: str) -> NumberAnswer | None:
    """The number that ``text`` spells as a whole (see the module docstring), else None."""
    if len(text) > 2 * MAX_DIGITS:
        return None
    s = _clean(text)
    match = _NUMBER_RE.fullmatch(s)
    if match is None:
        return None
    g = match.groupdict()
    unit_start = match.start("unit")
    glued = unit_start > 0 and not s[unit_start - 1].isspace()
    unit = _unit_of(g["unit"] or "", glued)
    if unit is None or sum(ch.isdigit() for ch in s) > MAX_DIGITS:
        return None
    negative = g["sign"] == "-"
    percent = g["pct"] is not None or g["zhpct"] is not None
    if g["zh"] is not None:
        if g["var"] or g["cur"] or g["sign"]:
            return None
        zh = g["zh"]
        negative, zh = zh.startswith("负"), zh.removeprefix("负")
        value = _chinese_value(zh)
        if value is None:
            return None
        text_out = str(value) if value.denominator == 1 else _decimal_or_fraction(value)
    elif g["dec"] is not None:
        digits = g["dec"].replace(",", "").replace(" ", "")
        if digits.startswith("."):
            digits = "0" + digits
        exponent = g["exp"] or g["exp10"]
        value = Fraction(digits)
        text_out = digits
        if exponent is not None:
            if abs(int(exponent)) > MAX_EXPONENT:
                return None  # an overflow is never equal to a number
            value *= Fraction(10) ** int(exponent)
            text_out = f"{digits}e{int(exponent)}"
        if g["zhbig"]:
            value *= _CHINESE_BIG_UNITS[g["zhbig"]]
            text_out = str(value) if value.denominator == 1 else _decimal_or_fraction(value)
    else:
        numerator = g["fn"] or g["fn1"] or g["sn"]
        denominator = g["fd"] or g["fd1"] or g["sd"]
        if Fraction(denominator) == 0:
            return None  # division by zero is never a number
        value = Fraction(numerator.lstrip("-")) / Fraction(denominator.lstrip("-"))
        text_out = f"{numerator.lstrip('-')}/{denominator.lstrip('-')}"
        negative ^= numerator.startswith("-") ^ denominator.startswith("-")
    if negative:
        value = -value
        text_out = "-" + text_out
    return NumberAnswer(value, percent, text_out + ("%" if percent else ""), unit)


def _decimal_or_fraction(value: Fraction) -> str:
    """Exact spelling: an integer, a decimal of at most six places, else ``a/b``."""
    if value.denominator == 1:
        return str(value.numerator)
    scaled = abs(value) * 10**6
    if scaled.denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    whole, part = divmod(scaled.numerator, 10**6)
    return ("-" if value < 0 else "") + f"{whole}.{part:06d}".rstrip("0")
