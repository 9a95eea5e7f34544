"""Screens run before evaluation: size limits, closed numeric expressions, hedges, relations."""

from __future__ import annotations

import time

import pytest

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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9^{9^{9^{9^{9}}}}", "power too large"),
        ("9**9**9**9", "power too large"),
        ("9^9^9", "power too large"),
        ("(2^{1000})^{1000}", "power too large"),
        ("10^{1000000}", "power too large"),
        (r"2^{10 \cdot 1000 \cdot 1000}", "power too large"),
        (r"\sum_{k=1}^{10^{9}} k", "power too large"),
        ("(10^{100})!", "factorial too large"),
        ("(1000!)!", "factorial too large"),
        ("9!!", "factorial too large"),
        ("100000!", "factorial too large"),
        ("1e999999999", "exponent overflow"),
        ("1.0e-1000", "exponent overflow"),
        (r"\frac{1}{0}", "division by zero"),
        (r"\dfrac{5}{0.0}", "division by zero"),
        ("18/0", "division by zero"),
        (r"5 \div 0", "division by zero"),
        ("9" * 401, "too many digits"),
        ("{" * 17 + "1" + "}" * 17, "nested too deep"),
        ("1+" * 1500, "too long"),
    ],
)
def test_unsafe_answers_are_named_before_evaluation(text, reason):
    assert unsafe_reason(text) == reason


@pytest.mark.parametrize(
    "text",
    [
        "2^{2005}",
        "3^{2007}",
        "10^{100}",
        r"2^{2004} \cdot 2",
        "(x+1)^{2}",
        "3!",
        "10!",
        r"\frac{1}{10}",
        "1/0.5",
        r"\frac{0}{5}",
        "1e100",
        r"\sqrt[3]{5832}",
        "7p+4e",
    ],
)
def test_ordinary_answers_pass(text):
    assert unsafe_reason(text) is None


def test_the_screen_is_fast_on_long_hostile_text():
    texts = ["(" * 1000 + "2" + ")^{2}" * 300, "^" * 1999, "!" * 1999, "1e" * 1000]
    start = time.perf_counter()
    for text in texts:
        unsafe_reason(text)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    ("text", "closed"),
    [
        ("18", True),
        (r"\frac{\sqrt{3}}{2}", True),
        (r"3 \times 6", True),
        (r"2\pi", True),
        (r"\log_2 8", True),
        ("1,234 + 1", True),
        ("x = 18", True),
        ("x+18", False),
        ("18x", False),
        ("lambda: 1", False),
        (r"\infty", False),
        ("17, 18", False),
        (r"\{18\}", False),
        ("9 9", False),
        (r"18 \text{ apples}", False),
        ("18i", False),
        ("", False),
    ],
)
def test_closed_numeric_expressions_have_no_variable_word_or_second_value(text, closed):
    assert is_closed_numeric(text) is closed


def test_side_by_side_numbers_are_found_but_a_fraction_shorthand_is_not():
    assert juxtaposed("9 9") and juxtaposed(r"9\,9") and juxtaposed("1 234 + 1")
    assert not juxtaposed(r"\frac 1 2") and not juxtaposed("9+9") and not juxtaposed("(1, 2)")


def test_hedges_relations_and_text_words():
    assert hedges(r"18 \text{ or more}") == {"or", "more"}
    assert hedges("约18") == {"约"} and hedges(r"\frac{1}{2}") == frozenset()
    assert hedges(r"\operatorname{tr} \sin x") == frozenset()  # command names are no words
    assert relations("x+1 = 18") == {"="} and relations(r"x \le 3") == {"<="}
    assert relations("x = 3") == frozenset() and relations(r"x \in [1, 2]") == frozenset()
    assert relations("x = 3 = y") == {"="}
    assert text_words(r"19 \text{ and } 43") == {"and"} and text_words("5i") == frozenset()
    assert strip_assignment(r"y = 2x + 3") == "2x + 3"


def test_number_bases_are_read_from_subscripts_of_numbers_only():
    assert bases("7602_8") == ("8",) and bases("141_{13} + 2_3") == ("13", "3")
    assert bases(r"\log_2 8") == () and bases("x_1 + a_{10}") == ()
