"""Answer extraction from model outputs and reference solutions.

Everything here is plain string scanning (no regex backtracking on unbounded input, no
evaluation of model text), so it is safe and linear-time on hostile outputs.

Kinds of answers:
- ``math``: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), else an
  "answer is ..." phrase.
- ``gsm8k`` / ``number``: the whole of the ``#### ...`` line, the last boxed answer or the
  "answer is"/"答案是" phrase, as one number when it reads as one (``numbers.read_number``),
  else as written (an expression is graded as a whole, never by a number inside it); only
  when the text marks no final answer, its last number, unless that number is an operand
  (``x+18``, ``\frac{3}{18}``, ``18^2``).
- ``choice``: the chosen letters of a multiple-choice question, as a sorted string (``"AC"``).
- ``cloze``: one answer per blank (several boxed answers or a ``;``-separated list).
"""

from __future__ import annotations

import re

from dsm_engine.rewards.numbers import chinese_to_number, read_number, to_halfwidth

__all__ = [
    "BOX_COMMANDS",
    "chinese_to_number",
    "extract_answer",
    "extract_choice",
    "extract_cloze",
    "extract_gold",
    "extract_gsm8k_gold",
    "extract_math_answer",
    "extract_number_answer",
    "find_all_boxed",
    "find_final_number",
    "find_last_boxed",
    "find_last_number",
    "to_halfwidth",
]

BOX_COMMANDS = ("\\boxed", "\\fbox")
KINDS = ("gsm8k", "math", "number", "choice", "cloze")

# Answer phrases, most specific first; the text after the LAST occurrence is the answer.
_ANSWER_PHRASES = (
    "final answer is",
    "the answer is",
    "answer is",
    "answer:",
    "最终答案是",
    "最终答案为",
    "答案是",
    "答案为",
    "答案：",
    "答案:",
    "答：",
    "答:",
)

_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_CHINESE_NUM_RE = re.compile(r"[零〇一二两三四五六七八九十百千万亿]+")


_BOX_SCAN_RE = re.compile(r"\\boxed|\\fbox|\\.|[{}]", re.DOTALL)


def _scan_boxes(text: str) -> list[tuple[int, int, str]]:
    """Every well-formed box as ``(start, end, content)``, in order of closing.

    One pass with a brace stack (linear even on megabytes of ``{`` or ``\\boxed{``): escaped
    braces ``\\{``/``\\}`` do not count; boxes still open at the end of the text (an output
    cut off mid-answer) are dropped. ``\\boxed 5`` (argument without braces) is accepted.
    """
    boxes: list[tuple[int, int, str]] = []
    stack: list[tuple[int, int]] = []  # (content start, box start) or (-1, -1) for a group
    n = len(text)
    position = 0
    while True:
        match = _BOX_SCAN_RE.search(text, position)
        if match is None:
            return boxes
        token, start = match.group(0), match.start()
        position = match.end()
        if token in BOX_COMMANDS:
            j = position
            while j < n and text[j] == " ":
                j += 1
            if j < n and text[j] == "{":
                stack.append((j + 1, start))
                position = j + 1
            elif position < n and text[position] == " " and j < n:
                k = j
                while k < n and text[k] not in " $\n":
                    k += 1
                boxes.append((start, k, text[j:k]))
                position = k
        elif token == "{":
            stack.append((-1, -1))
        elif token == "}" and stack:
            content_start, box_start = stack.pop()
            if content_start >= 0:
                boxes.append((box_start, position, text[content_start:start]))


def find_all_boxed(text: str) -> list[str]:
    """Contents of every well-formed ``\\boxed``/``\\fbox`` in ``text``, in order; a box
    inside another box is reported once, as part of the outer content."""
    result: list[str] = []
    last_end = -1
    for start, end, content in sorted(_scan_boxes(text)):
        if start >= last_end:
            result.append(content)
            last_end = end
    return result


def find_last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{..}``/``\\fbox{..}`` (nested braces kept;
    of nested boxes, the innermost)."""
    boxes = _scan_boxes(text)
    return max(boxes)[2] if boxes else None


def _after_answer_phrase(text: str) -> str | None:
    """The text after the last "answer is"/"答案是" phrase, cut at the end of its sentence."""
    lowered = text.lower()
    best = -1
    best_len = 0
    for phrase in _ANSWER_PHRASES:
        pos = lowered.rfind(phrase)
        if pos > best:
            best, best_len = pos, len(phrase)
    if best < 0:
        return None
    tail = text[best + best_len :].strip()
    tail = tail.lstrip(":：").strip()
    # the sentence ends at a newline, or a full stop that is not a decimal point
    line = tail.split("\n", 1)[0]
    cut = len(line)
    for i, ch in enumerate(line):
        if ch == "。" or (ch == "." and (i + 1 == len(line) or not line[i + 1].isdigit())):
            cut = i
            break
    answer = line[:cut].strip()
    if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer.strip("$").strip()
    return answer or None


def _last_number_match(text: str) -> re.Match[str] | None:
    last = None
    for match in _NUMBER_RE.finditer(text):
        last = match
    return last


def _spell(match: re.Match[str]) -> str:
    number = match.group(0).replace(",", "")
    if number.startswith("-."):
        return "-0" + number[1:]
    return "0" + number if number.startswith(".") else number


def _last_chinese_number(text: str) -> str | None:
    chinese = None
    for match in _CHINESE_NUM_RE.finditer(text):
        chinese = match
    if chinese is not None:
        value = chinese_to_number(chinese.group(0))
        if value is not None:
            return str(value)
    return None


def find_last_number(text: str) -> str | None:
    """The last number in ``text``, as a plain ASCII string without thousands separators.

    Accepts ``-1,234.5``, ``3/4``, full-width digits and, when the text has no Arabic digit
    at all, Chinese numerals.
    """
    text = to_halfwidth(text)
    last = _last_number_match(text)
    return _spell(last) if last is not None else _last_chinese_number(text)


_COMMAND_END_RE = re.compile(r"\\[A-Za-z]+\s*$")
_SPACED_VARIABLE_RE = re.compile(r"\s+[B-HJ-Zb-z](?![A-Za-z])")  # "18 x" (not "18 a day")


def _is_operand(text: str, start: int, end: int) -> bool:
    """Whether the number at ``text[start:end]`` is part of an expression (``x+18``,
    ``\\frac{3}{18}``, ``18^2``, ``18x``) rather than a value standing on its own."""
    before, after = text[:start], text[end:]
    previous, following = before[-1:], after[:1]
    if previous and (previous.isascii() and previous.isalnum() or previous in "_^{\\"):
        return True
    if before.rstrip()[-1:] in tuple("+-*/^×÷·<>≤≥≈~") or _COMMAND_END_RE.search(before[-64:]):
        return True  # "x + 18", "2 \\times 18"
    if following.isascii() and following.isalpha() and not after[1:2].isalpha():
        return True
    next_sign = after.lstrip()[:1]
    return (
        bool(next_sign)
        and next_sign in "+-*/^×÷·!}<>≤≥≈_"
        or bool(_SPACED_VARIABLE_RE.match(after))
    )


def find_final_number(text: str) -> str | None:
    """The number a text without a marked answer ends on: its last number, unless that
    number is an operand of an expression (then None). A ``%`` right after it is kept."""
    text = to_halfwidth(text)
    last = _last_number_match(text)
    if last is None:
        return _last_chinese_number(text)
    if _is_operand(text, last.start(), last.end()):
        return None
    percent = text[last.end() :].lstrip().startswith(("%", "\\%"))
    return _spell(last) + ("%" if percent else "")


def extract_gsm8k_gold(answer: str) -> str:
    """The number after ``####`` in a GSM8K reference answer (commas removed)."""
    if "####" not in answer:
        raise ValueError("GSM8K answer has no '####' line: " + answer[-80:])
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def extract_math_answer(text: str) -> str | None:
    """MATH-style answer: the last boxed expression, else an "answer is" phrase."""
    boxed = find_last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return _after_answer_phrase(text)


def extract_number_answer(text: str) -> str | None:
    """Numeric answer (GSM8K, CMATH, MGSM): the whole ``####`` line, last boxed answer or
    answer phrase (the first of these present); without any, the final number of the text.

    A candidate that reads as one number comes back in canonical form (``\\$1,250`` ->
    ``1250``, ``27.3%`` kept, ``十八个`` -> ``18``); any other candidate comes back whole, so
    that ``\\boxed{x+18}`` is the answer ``x+18`` and never the number 18.
    """
    candidates = []
    if "####" in text:
        candidates.append(text.rsplit("####", 1)[1].split("\n", 1)[0])
    candidates += [find_last_boxed(text), _after_answer_phrase(text)]
    for candidate in candidates:
        if candidate is None or not candidate.strip():
            continue
        number = read_number(candidate)
        return number.text if number is not None else candidate.strip()
    return find_final_number(text)


_LETTERS = "ABCDEFGH"
_CHOICE_NOISE_RE = re.compile(r"\\(?:text|mathrm|textbf)|[\s,;、()\[\]{}$]")


def _letters_in(text: str, valid: str) -> str:
    """Sorted unique standalone choice letters in ``text`` (``(A)``, ``A``, ``A、C``)."""
    text = to_halfwidth(text)
    found = set()
    for i, ch in enumerate(text):
        if ch not in valid:
            continue
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        # a letter inside a word ("And", "ABC" as a name of a triangle) is not a choice
        if before.isascii() and before.isalpha() or after.isascii() and after.isalpha():
            continue
        found.add(ch)
    return "".join(sorted(found))


def extract_choice(text: str, num_options: int = 4) -> str | None:
    """Chosen option letters of a multiple-choice answer, sorted (``"AC"``), or None."""
    valid = _LETTERS[:num_options]
    for candidate in (find_last_boxed(text), _after_answer_phrase(text)):
        if not candidate:
            continue
        # a bare letter list ("AC", "A, C", "(B)", "\text{(D)}") names every letter in it
        bare = _CHOICE_NOISE_RE.sub("", to_halfwidth(candidate)).rstrip(".")
        if bare and all(ch in valid for ch in bare):
            return "".join(sorted(set(bare)))
        letters = _letters_in(candidate.replace("\\text", " "), valid)
        if letters:
            return letters
    # fallback: the letters of the last line that names any
    for line in reversed(text.strip().splitlines()):
        letters = _letters_in(line, valid)
        if letters:
            return letters
    return None


def _split_blanks(answer: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"[;；]", answer)]
    return [p.strip("$").strip() for p in parts if p.strip("$").strip()]


def extract_cloze(text: str, num_blanks: int = 1) -> list[str] | None:
    """One answer per blank: the last ``num_blanks`` boxed answers, or a ``;``-list."""
    boxed = find_all_boxed(text)
    if boxed:
        if len(boxed) >= num_blanks > 1:
            return [b.strip() for b in boxed[-num_blanks:]]
        parts = _split_blanks(boxed[-1])
        return parts or None
    phrase = _after_answer_phrase(text)
    if phrase is None:
        return None
    return _split_blanks(phrase) or None


def extract_answer(text: str, kind: str, **options: int) -> str | list[str] | None:
    """Extract the final answer of ``kind`` (one of ``KINDS``) from a model output."""
    if kind == "math":
        return extract_math_answer(text)
    if kind in ("gsm8k", "number"):
        return extract_number_answer(text)
    if kind == "choice":
        return extract_choice(text, options.get("num_options", 4))
    if kind == "cloze":
        return extract_cloze(text, options.get("num_blanks", 1))
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")


def extract_gold(gold: str, kind: str) -> str | list[str]:
    """The reference answer of ``kind`` from a gold string (a bare answer or a full solution).

    GSM8K solutions (``... #### 18``) and MATH solutions (``... \\boxed{2}``) are reduced to
    their final answer; bare answers are returned stripped.
    """
    gold = gold.strip()
    if kind in ("gsm8k", "number"):
        if "####" in gold:
            return extract_gsm8k_gold(gold)
        return to_halfwidth(gold).replace(",", "").strip("$ ")
    if kind == "math":
        boxed = find_last_boxed(gold)
        return gold if boxed is None else boxed.strip()
    if kind == "choice":
        letters = "".join(sorted(set(ch for ch in gold.upper() if ch in _LETTERS)))
        if not letters:
            raise ValueError(f"choice gold {gold!r} names no option letter")
        return letters
    if kind == "cloze":
        return _split_blanks(gold)
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
