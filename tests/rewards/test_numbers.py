"""Strict number reading: a numeric answer is one number as a whole, or it is no number."""

from __future__ import annotations

from fractions import Fraction

import pytest

from dsm_engine.rewards.numbers import read_number


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("18", 18, "18"),
        ("-18", -18, "-18"),
        ("−18", -18, "-18"),
        ("18.50", Fraction(37, 2), "18.50"),
        (".5", Fraction(1, 2), "0.5"),
        ("1,234", 1234, "1234"),
        ("1{,}234", 1234, "1234"),
        (r"10\,000", 10000, "10000"),
        ("10 000", 10000, "10000"),
        (r"\$15,\!000", 15000, "15000"),
        ("3/4", Fraction(3, 4), "3/4"),
        (r"\frac{3}{4}", Fraction(3, 4), "3/4"),
        (r"\dfrac12", Fraction(1, 2), "1/2"),
        (r"-\frac{-3}{4}", Fraction(3, 4), "3/4"),
        ("1.5e3", 1500, "1.5e3"),
        (r"1.5 \times 10^{3}", 1500, "1.5e3"),
        ("x = 7", 7, "7"),
        ("{18}", 18, "18"),
        (r"\left(18\right)", 18, "18"),
        ("18.", 18, "18"),
        ("１８", 18, "18"),
    ],
)
def test_plain_numbers_are_read_exactly(text, value, canonical):
    number = read_number(text)
    assert number is not None and number.value == value and number.text == canonical


@pytest.mark.parametrize(
    ("text", "value", "percent", "unit"),
    [
        ("27.3%", Fraction(273, 10), True, ""),
        (r"50\%", 50, True, ""),
        ("18 percent", 18, True, ""),
        (r"18 \text{ apples}", 18, False, "apples"),
        ("18 apples", 18, False, "apples"),
        ("18cm", 18, False, "cm"),
        (r"440\text{ cm}^2", 440, False, "cm^2"),
        ("18 km/h", 18, False, "km/h"),
        (r"9\text{ a.m.}", 9, False, "am"),
        ("18^\\circ", 18, False, ""),
        ("１８元", 18, False, "元"),
        ("18千米", 18, False, "千米"),
    ],
)
def test_percent_signs_and_units_are_kept_apart_from_the_value(text, value, percent, unit):
    number = read_number(text)
    assert (number.value, number.percent, number.unit) == (value, percent, unit)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("十八", 18),
        ("十八个", 18),
        ("两千零五", 2005),
        ("负三", -3),
        ("三点五", Fraction(7, 2)),
        ("三分之一", Fraction(1, 3)),
        ("百分之四十", 40),
        ("3.5万", 35000),
        ("18万元", 180000),
    ],
)
def test_chinese_numerals(text, value):
    assert read_number(text).value == value


@pytest.mark.parametrize(
    "text",
    [
        "x+18",  # a free variable
        "18x",
        "18 x",
        r"5\mathrm{i}",  # the imaginary unit is no unit of measure
        r"\frac{3}{18} + 1",
        r"\frac{1}{0}",  # division by zero
        "1/0",
        "1e999999999",  # overflow
        r"10 \times 10^{999}",
        "9" * 500,  # too many digits
        "lambda: 1",
        "18, 19",
        "(1,234)",  # a pair, not a thousand
        "1 8",  # two numbers
        "12,34",
        r"18 \text{ or more}",  # hedges
        r"\text{about } 18",
        "18 is wrong",
        "18以上",
        "约18",
        "18或19",
        "18千",
        "18^2",
        r"\infty",
        "",
    ],
)
def test_anything_but_one_number_is_refused(text):
    assert read_number(text) is None
