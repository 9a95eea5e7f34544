"""Answer equivalence: is a predicted final answer mathematically equal to the reference?

``are_equivalent(pairs)`` / ``is_equivalent(pred, gold)`` decide in two tiers:

1. ``quick_equivalence`` (in-process, microseconds, nothing evaluated):
   - both answers read as single numbers (``numbers.read_number``): exact rational
     comparison (units, when both name one, must agree; see percent and rounding below);
   - else the normalised strings (``normalize_answer``) are equal: True;
   - else the pair is screened (``guards``): an answer too large to evaluate or with a
     literal division by zero, a qualifier, relation or text word the reference lacks
     (``18 \\text{ or more}``, ``x+1 = 18``), two numbers written side by side (``9 9``),
     a number base other than the reference's (``7602_9`` for ``7602_8``), or a number
     reference against anything but one closed numeric expression (``x+18``, ``lambda: 1``,
     ``\\{18\\}``, ``18, 19``): False;
   - else undecided.
2. ``SymbolicChecker`` (``checker.py``): math-verify in worker processes, under a hard time
   limit per pair, for the undecided pairs only.

Normalisations (what may differ between equal answers): spaces, ``$``, ``\\left``/``\\right``,
LaTeX spacing, ``\\dfrac``/``\\tfrac``/``\\frac12``, ``\\sqrt3``, ``a/b``, SymPy's printing
(``sqrt(2)/2``, ``pi/4``, ``2**10``, as programs print answers), thousands
separators (``1,234``, ``1{,}234``, ``10\\,000``; space-separated groups of three digits only
for a plain number), trailing zeros (``3.0``), degrees, ``\\text{}`` wrappers, one leading
``x =`` or ``x \\in``, a trailing unit (``5\\text{ cm}``, ``18 apples``, ``18元``; not one
holding a qualifier word), currency signs, Chinese numerals (``十八``, ``三分之一``,
``百分之四十``, ``3.5万``). A percent sign may be read both ways: ``50\\%`` equals ``50`` (a
reference in percent units, the benchmarks' convention) and ``0.5``; two percent signs must
agree. ``allow_rounding`` (numeric benchmarks) also accepts a decimal of two or more places
that is the correctly rounded value of a reference with no finite decimal (``0.33`` for 1/3).

Guarantees: the whole final answer must equal the reference: an answer with a free
variable, a word, a second value, a division by zero, a non-numeric token or an overflow is
never equal to a number; huge or nested powers, factorials and exponents are rejected by
size before any evaluation; model text is never executed; every pair is decided within the
checker's time limit (a hostile pair costs at most one worker restart). In the symbolic
tier decimals must agree to 12 places (math-verify's default, 6, takes ``1.414214`` for
``\\sqrt{2}``).

Not guaranteed: equalities math-verify cannot prove are missed (``1011_2`` vs ``11``, number
words such as ``eighteen``); a unit is compared only when both answers name one; a percent
sign is read both ways, so ``0.5\\%`` equals a reference of ``0.5``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from dsm_engine.rewards.checker import EquivalenceConfig, SymbolicChecker
from dsm_engine.rewards.guards import (
    bases,
    hedges,
    is_closed_numeric,
    juxtaposed,
    relations,
    strip_assignment,
    text_words,
    unsafe_reason,
)
from dsm_engine.rewards.numbers import HEDGE_WORDS, NumberAnswer, read_number, to_halfwidth

__all__ = [
    "EquivalenceConfig",
    "SymbolicChecker",
    "are_equivalent",
    "from_python",
    "is_equivalent",
    "normalize_answer",
    "parse_number",
    "quick_equivalence",
]


# --------------------------------------------------------------------------- normalisation

_TEXT_COMMANDS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mbox", "\\rm")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
# a unit word needs a space ("\text{ m}") or two letters ("\text{cm}"): "5\mathrm{i}" is no unit
_UNIT_TAIL_RE = re.compile(
    r"^(.*\d[^\\]*?)\s*\\(?:text|mbox)\{(?:\s+[a-zA-Z]|[a-zA-Z]{2})[a-zA-Z\s.]*\}(\^\{?\d\}?)?$"
)
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\})")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d|[a-zA-Z])")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TRAILING_ZERO_RE = re.compile(r"^(-?\d+)\.0+$")
_SLASH_FRACTION_RE = re.compile(r"^(-?)(\d{1,30})/(\d{1,30})$")
_LATEX_FRACTION_RE = re.compile(r"^(-?)\\frac\{(-?\d{1,30})\}\{(\d{1,30})\}$")
_DECIMAL_RE = re.compile(r"^-?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})$")
_MAX_NORMALIZE_CHARS = 2000
_GROUP_SPACE_RE = re.compile(r"(?<=\d) (?=\d{3}(?!\d))")
_JUXTAPOSED_RE = re.compile(r"(\d) +(?=\d)")


def _unwrap_command(text: str, command: str) -> str:
    """Replace ``\\command{X}`` by ``X`` (nested braces respected)."""
    out = []
    i = 0
    while True:
        j = text.find(command + "{", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        # \textbf must not match as \text + "bf{": check the next char is the brace
        out.append(text[i:j])
        k = j + len(command)
        depth = 0
        end = -1
        for m in range(k, len(text)):
            if text[m] == "{":
                depth += 1
            elif text[m] == "}":
                depth -= 1
                if depth == 0:
                    end = m
                    break
        if end < 0:
            out.append(text[j:])
            return "".join(out)
        out.append(text[k + 1 : end])
        i = end + 1


def normalize_answer(answer: str) -> str:
    """Canonical string form of a final answer, in the spirit of the MATH paper's ``is_equiv``.

    Removes what does not change the value: spaces, ``$``, ``\\left``/``\\right``, ``\\!`` and
    other spacing, degrees, percent signs, trailing unit words (``5\\text{ cm}``; not
    ``\\text{ or more}``), ``\\text{}`` wrappers, an ``x =``/``x \\in`` prefix, thousands
    separators and trailing ``.0``; keeps digits written side by side apart (``9 9``); rewrites
    ``\\dfrac``/``\\tfrac`` to ``\\frac``, ``\\frac12`` to ``\\frac{1}{2}``, ``\\sqrt3`` to
    ``\\sqrt{3}``, ``a/b`` to ``\\frac{a}{b}`` and ``0.5`` to ``\\frac{1}{2}``.
    """
    if len(answer) > _MAX_NORMALIZE_CHARS:
        return answer.strip()  # no final answer is this long: keep the regexes linear
    s = to_halfwidth(answer).strip()
    s = s.replace("\n", " ").replace("\\\\", "\\")
    for space in _SPACING:
        s = s.replace(space, " ")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip().rstrip(".").strip()
    unit = _UNIT_TAIL_RE.match(s)
    if unit and not {w.lower() for w in re.findall(r"[A-Za-z]+", s[unit.end(1) :])} & HEDGE_WORDS:
        s = unit.group(1)
    for command in _TEXT_COMMANDS:
        if command + "{" in s:
            s = _unwrap_command(s, command)
    s = strip_assignment(s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_SHORT_RE.sub(lambda m: "\\frac" + _braced(m.group(1)) + _braced(m.group(2)), s)
    # "10 000" is ten thousand; "9 9" is no number: keep a mark that never equals a digit
    s = _JUXTAPOSED_RE.sub("\\1\u2423", _GROUP_SPACE_RE.sub("", s))
    s = s.replace(" ", "")
    s = re.sub(r"(^|[{(\[,=+\-])\.(\d)", r"\g<1>0.\2", s)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    zero = _TRAILING_ZERO_RE.match(s)
    if zero:
        s = zero.group(1)
    if s == "0.5":
        s = "\\frac{1}{2}"
    slash = _SLASH_FRACTION_RE.match(s)
    if slash:
        s = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
    return s


_PY_SQRT_RE = re.compile(r"(?<![A-Za-z\\])sqrt\(([^()]*)\)")
_PY_NAME_RE = re.compile(r"(?<![A-Za-z\\])(pi|sin|cos|tan)(?![A-Za-z])")
_PY_POWER_RE = re.compile(r"\*\*\s*(\d+|\([^()]*\))")


def from_python(answer: str) -> str:
    """SymPy's printing of an answer (``sqrt(2)/2``, ``pi/4``, ``2**10``), as programs print
    them, in LaTeX (``\\sqrt{2}/2``, ``\\pi/4``, ``2^{10}``); any other text unchanged."""
    if "sqrt(" not in answer and "**" not in answer and not _PY_NAME_RE.search(answer):
        return answer
    s = _PY_SQRT_RE.sub(r"\\sqrt{\1}", answer)
    s = _PY_NAME_RE.sub(r"\\\1", s)
    return _PY_POWER_RE.sub(lambda m: "^{" + m.group(1) + "}", s)


def _braced(token: str) -> str:
    return token if token.startswith("{") else "{" + token + "}"


def parse_number(answer: str) -> Fraction | None:
    """Exact value of an answer that is one plain number (``-12``, ``3.50``, ``3/4``,
    ``\\frac{3}{4}``, ``25\\%`` -> 25, ``18 apples``), else None (``numbers.read_number``).

    Never builds a huge integer: ``1e1000000000`` is None.
    """
    number = read_number(answer)
    return None if number is None else number.value


def _decimal_places(text: str) -> int:
    s = text.rstrip("%")
    return len(s.split(".", 1)[1]) if re.fullmatch(r"-?\d+\.\d+", s) else 0


def _is_terminating(value: Fraction) -> bool:
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _readings(number: NumberAnswer) -> list[tuple[Fraction, int]]:
    """(value, decimal places) of each reading: a percent is also read as a fraction."""
    places = _decimal_places(number.text)
    if not number.percent:
        return [(number.value, places)]
    return [(number.value, places), (number.value / 100, places + 2)]


def _numbers_equal(pred: NumberAnswer, gold: NumberAnswer, allow_rounding: bool) -> bool:
    if pred.unit and gold.unit and pred.unit != gold.unit:
        return False  # "9 a.m." is not "9 p.m."
    if pred.percent and gold.percent:
        pairs = [((pred.value, _decimal_places(pred.text)), gold.value)]
    else:
        pairs = [(p, g) for p in _readings(pred) for g, _ in _readings(gold)]
    if any(p == g for (p, _), g in pairs):
        return True
    return allow_rounding and any(
        places >= 2 and not _is_terminating(g) and abs(p - g) <= Fraction(1, 2 * 10**places)
        for (p, places), g in pairs
    )


def quick_equivalence(pred: str, gold: str, allow_rounding: bool = False) -> bool | None:
    """Cheap verdict: True/False when decided without evaluation, else None (see the module
    docstring for the order of the checks).

    allow_rounding: accept a decimal ``pred`` (>= 2 places) that is ``gold`` correctly rounded,
    when ``gold`` has no finite decimal expansion (``0.33`` for ``1/3``; never ``0.13`` for 0.125).
    """
    if not pred or not gold:
        return False
    if len(pred) > _MAX_NORMALIZE_CHARS or len(gold) > _MAX_NORMALIZE_CHARS:
        return pred.strip() == gold.strip()  # no final answer is this long: skip the regexes
    pred, gold = from_python(pred), from_python(gold)
    pred_number, gold_number = read_number(pred), read_number(gold)
    if pred_number is not None and gold_number is not None:
        return _numbers_equal(pred_number, gold_number, allow_rounding)
    norm_pred, norm_gold = normalize_answer(pred), normalize_answer(gold)
    if not norm_pred or not norm_gold:
        return False
    if norm_pred == norm_gold:
        return True
    # the answers differ as written: only evaluation can equate them, and only if it is safe
    if unsafe_reason(pred) is not None or unsafe_reason(gold) is not None:
        return False
    if not hedges(pred) <= hedges(gold) or not relations(pred) <= relations(gold):
        return False
    if not text_words(pred) <= text_words(gold):
        return False
    if juxtaposed(pred) and not juxtaposed(gold):
        return False
    if bases(pred) and bases(pred) != bases(gold):
        return False  # 7602_9 is not 7602_8 (a reference's base may be left out)
    if (gold_number is not None or is_closed_numeric(gold)) and not is_closed_numeric(pred):
        return False  # a free variable, a word or a second value never equals a number
    return None


# --------------------------------------------------------------------------- public API


def _symbolic_form(answer: str) -> str:
    """What math-verify is shown: a plain number as its exact value (``1.8e1`` -> ``18``,
    ``18 apples`` -> ``18``), which its LaTeX parser may misread; other answers in LaTeX
    (``from_python``)."""
    number = read_number(answer)
    if number is None or number.percent:
        return from_python(answer)
    value = number.value
    if value.denominator == 1:
        return str(value.numerator)
    return ("-" if value < 0 else "") + f"\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def are_equivalent(
    pairs: Sequence[tuple[str | None, str | None]],
    checker: SymbolicChecker | None = None,
    symbolic: bool = True,
    allow_rounding: bool = False,
) -> list[bool]:
    """Verdict per ``(pred, gold)`` pair: quick tier first, math-verify only when undecided.

    A None or empty answer is never equivalent. ``symbolic=False`` stops at the quick tier
    (undecided pairs are False). ``checker``: the caller's warm checker; without one, a
    one-worker checker is started for this call (only if a pair needs math-verify) and stopped
    before it returns, so callers grading in many calls should own one and pass it.
    """
    results: list[bool] = [False] * len(pairs)
    undecided: list[int] = []
    for i, (pred, gold) in enumerate(pairs):
        if not pred or not gold:
            continue
        verdict = quick_equivalence(pred, gold, allow_rounding=allow_rounding)
        if verdict is None:
            undecided.append(i)
        else:
            results[i] = verdict
    if symbolic and undecided:
        todo = [
            (_symbolic_form(str(pairs[i][0])), _symbolic_form(str(pairs[i][1]))) for i in undecided
        ]
        if checker is None:
            with SymbolicChecker() as own:
                verdicts = own.check(todo)
        else:
            verdicts = checker.check(todo)
        for i, verdict in zip(undecided, verdicts):
            results[i] = verdict
    return results


def is_equivalent(pred: str | None, gold: str | None, **kwargs) -> bool:
    """``are_equivalent`` for one pair."""
    return are_equivalent([(pred, gold)], **kwargs)[0]
