"""Answer extraction: boxed answers, fallbacks, numbers (Arabic, full-width, Chinese), choices."""

from __future__ import annotations

import pytest

from dsm_engine.rewards.extract import (
    chinese_to_number,
    extract_answer,
    extract_choice,
    extract_cloze,
    extract_gold,
    extract_math_answer,
    extract_number_answer,
    find_all_boxed,
    find_last_boxed,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"first \boxed{1} then \boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
        (r"\fbox{3}", "3"),
        (r"the answer is $\boxed 5$", "5"),
        (r"\boxed{7} and a cut-off \boxed{\frac{1", "7"),
        (r"\boxed{\boxed{2}}", "2"),  # the innermost box is the answer
        ("no box here", None),
    ],
)
def test_last_boxed_handles_nesting_fbox_and_truncation(text, expected):
    assert find_last_boxed(text) == expected


def test_all_boxed_reports_nested_boxes_once():
    assert find_all_boxed(r"\boxed{1} x \boxed{\fbox{2}} \fbox{3}") == ["1", r"\fbox{2}", "3"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"Thus the final answer is $\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
        ("The answer is 3.5.", "3.5"),
        ("So the answer is: (2, 3)\nDone", "(2, 3)"),
        ("nothing to see", None),
    ],
)
def test_math_answer_falls_back_to_answer_phrases(text, expected):
    assert extract_math_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 a day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        (r"so she pays \boxed{\$1,250}.", "1250"),
        ("The answer is 42. Next question has 7 apples.", "42"),
        ("16 - 3 - 4 = 9 eggs, and 9 * 2 = 18", "18"),
        ("The loss is -5 dollars", "-5"),
        ("it costs .5 dollars", "0.5"),
        ("答案是：１８元。", "18"),
        ("所以一共有十八个苹果", "18"),
        ("答案为 2,125 元", "2125"),
        ("所以答案是 3/4", "3/4"),
        ("增长了 27.3%，所以答案是27.3%", "27.3%"),
        ("no digits at all", None),
    ],
)
def test_number_answer_formats(text, expected):
    assert extract_number_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("十八", 18),
        ("两千零五", 2005),
        ("三万五千", 35000),
        ("一百零一", 101),
        ("九", 9),
        ("十", 10),
    ],
)
def test_chinese_numerals(text, value):
    assert chinese_to_number(text) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("答案是 (B)", "B"),
        (r"\boxed{AC}", "AC"),
        ("解析……\n故选：A、D", "AD"),
        ("The answer is B.", "B"),
        ("And so we pick option C", "C"),
        (r"\boxed{\text{(D)}}", "D"),
        ("In triangle ABC nothing is chosen", None),
    ],
)
def test_choice_letters(text, expected):
    assert extract_choice(text) == expected


def test_cloze_blanks_from_several_boxes_or_a_list():
    assert extract_cloze(r"a=\boxed{5}, b=\boxed{10}", num_blanks=2) == ["5", "10"]
    assert extract_cloze(r"\boxed{5;\frac{8}{9}}", num_blanks=2) == ["5", r"\frac{8}{9}"]
    assert extract_cloze("答案是 $5$;$10$", num_blanks=2) == ["5", "10"]


def test_gold_extraction_per_kind():
    assert extract_gold("a\n#### 1,000", "gsm8k") == "1000"
    assert extract_gold(r"so $\boxed{\dfrac{1}{2}}$.", "math") == r"\dfrac{1}{2}"
    assert extract_gold("A C", "choice") == "AC"
    assert extract_gold("$5$;$10$", "cloze") == ["5", "10"]
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract_answer("1", "essay")


def test_extraction_is_linear_on_hostile_text():
    import time

    text = "{" * 200_000 + r"\boxed{" * 1000 + "x" * 1_000_000
    start = time.perf_counter()
    extract_math_answer(text)
    extract_number_answer(text)
    extract_choice(text)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{x+18}", "x+18"),  # the whole answer, never the number inside it
        (r"\boxed{\frac{3}{18}}", "3/18"),
        (r"\boxed{lambda: 1}", "lambda: 1"),
        ("#### 1e999999999", "1e999999999"),
        ("#### x+18\nmore text 18", "x+18"),
        (r"The answer is 18 \text{ or more}.", r"18 \text{ or more}"),
        (r"\boxed{18 \text{ apples}}", "18"),
        (r"\boxed{\$1,234.50}", "1234.50"),
        ("答案是十八个", "18"),
    ],
)
def test_number_answers_are_read_whole(text, expected):
    assert extract_number_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x + 18", None),  # no marked answer, and the last number is an operand
        (r"so the total is 2 \times 18", None),
        ("it is 18^2", None),
        ("so 18x", None),
        ("the value is 18 / 2", None),
        (r"cut off \boxed{18", None),
        ("She makes 9 * 2 = $18 a day.", "18"),
        ("so she has 18 apples left", "18"),
        ("the rate rose by 25%", "25%"),
    ],
)
def test_the_final_number_of_an_unmarked_text_must_stand_alone(text, expected):
    assert extract_number_answer(text) == expected
