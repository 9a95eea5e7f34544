"""Answer extraction from model outputs and reference solutions.

Everything here is plain string scanning (no regex backtracking on unbounded input, no
evaluation of model text), so it is safe and linear-time on hostile outputs.

Kinds of answers:
- ``math``: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), else an
  "answer is ..." phrase.
- ``gsm8k`` / ``number``: ``#### n``, a boxed answer, an "answer is"/"答案是" phrase, else the
  last number in the text (Arabic, full-width or Chinese numerals).
- ``choice``: the chosen letters of a multiple-choice question, as a sorted string (``"AC"``).
- ``cloze``: one answer per blank (several boxed answers or a ``;``-separated list).
"""

from __future__ import annotations

import re

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
_CHINESE_NUM_RE = re.compile(r"[零〇一二两三四五六七八九十百千万亿]+")


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


def find_last_number(text: str) -> str | None:
    """The last number in ``text``, as a plain ASCII string without thousands separators.

    Accepts ``-1,234.5``, ``3/4``, full-width digits and, when the text has no Arabic digit
    at all, Chinese numerals.
    """
    text = to_halfwidth(text)
    last = None
    for match in _NUMBER_RE.finditer(text):
        last = match
    if last is not None:
        number = last.group(0).replace(",", "")
        if number.startswith("-."):
            number = "-0" + number[1:]
        elif number.startswith("."):
            number = "0" + number
        return number
    chinese = None
    for match in _CHINESE_NUM_RE.finditer(text):
        chinese = match
    if chinese is not None:
        value = chinese_to_number(chinese.group(0))
        if value is not None:
            return str(value)
    return None


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
    """Numeric answer (GSM8K, CMATH, MGSM): ``####``, boxed, answer phrase, then last number."""
    if "####" in text:
        number = find_last_number(text.rsplit("####", 1)[1].split("\n", 1)[0])
        if number is not None:
            return number
    for candidate in (find_last_boxed(text), _after_answer_phrase(text)):
        if candidate is None:
            continue
        number = find_last_number(candidate)
        if number is not None:
            # keep a percent sign: 40% and 0.4 are different answers to "what percent"
            return number + "%" if candidate.rstrip().rstrip("$").endswith("%") else number
    return find_last_number(text)


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
