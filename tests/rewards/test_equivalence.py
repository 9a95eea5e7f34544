"""Normalisation, equivalence and the time-limited, non-executing symbolic checker."""

from __future__ import annotations

import time

import pytest

from dsm_engine.rewards import verify
from dsm_engine.rewards.equivalence import (
    EquivalenceConfig,
    SymbolicChecker,
    are_equivalent,
    from_python,
    is_equivalent,
    normalize_answer,
    parse_number,
    quick_equivalence,
)


@pytest.fixture(scope="module")
def checker():
    c = SymbolicChecker(EquivalenceConfig(timeout_s=10.0))
    yield c
    c.close()


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"5\text{ cm}", "5"),
        (r"12 \text{inches}^2", "12"),
        (r"\text{Devon}", "Devon"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"25\%", "25"),
        (r"\$1,000", "1000"),
        ("x = 7", "7"),
        (r"3.0", "3"),
        (r"\sqrt3", r"\sqrt{3}"),
        (r"10\!000", "10000"),
        ("0.5", r"\frac{1}{2}"),
        ("-3/4", r"-\frac{3}{4}"),
        (r"1-5\mathrm{i}", "1-5i"),
        (".25", "0.25"),
        (r"\frac 1 2", r"\frac{1}{2}"),
        ("9 9", "9\u24239"),  # two numbers side by side never normalise to 99
        ("10 000", "10000"),
        (r"18 \text{ or more}", "18ormore"),  # a hedge is no unit
    ],
)
def test_normalize_answer_like_math_is_equiv(raw, normal):
    assert normalize_answer(raw) == normal


def test_parse_number_is_exact_and_bounded():
    assert parse_number(r"\frac{3}{4}") == parse_number("0.75") == parse_number("3/4")
    assert parse_number("1e1000000000") is None  # no exponent notation: never a huge integer
    assert parse_number(r"\frac{1}{0}") is None
    assert parse_number("x+1") is None


@pytest.mark.parametrize(
    "form", ["0.5", r"\frac{1}{2}", "1/2", r"\dfrac12", r"\tfrac{1}{2}", "0.50", r"$\frac12$"]
)
def test_equivalent_forms_of_one_half(form, checker):
    for other in ["0.5", r"\frac{1}{2}", "1/2", r"\dfrac12"]:
        assert is_equivalent(form, other, checker=checker), (form, other)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("(x+1)^2", "x^2+2x+1"),
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
        (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\{2, 1\}", r"\{1, 2\}"),
        (r"[1, 3)", r"[1,3)"),
        ("2 \\sqrt{3}", r"\sqrt{12}"),
    ],
)
def test_symbolically_equivalent_answers_are_right(pred, gold, checker):
    assert is_equivalent(pred, gold, checker=checker)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("19", "18"),  # off by one
        ("-18", "18"),  # sign flipped
        (r"\frac{1}{3}", r"\frac{1}{2}"),  # wrong fraction
        (r"\frac{2}{1}", r"\frac{1}{2}"),  # inverted fraction
        ("0.333", r"\frac{1}{3}"),  # a rounded value is not the exact answer
        ("(x-1)^2", "x^2+2x+1"),
        (r"-\frac{\sqrt{2}}{2}", r"\frac{\sqrt{2}}{2}"),
        ("(1, 3]", "[1, 3)"),
        ("", "1"),
        (None, "1"),
    ],
)
def test_perturbed_answers_are_wrong(pred, gold, checker):
    assert not is_equivalent(pred, gold, checker=checker)


def test_rounding_is_accepted_only_when_asked_and_only_for_non_terminating_golds():
    assert quick_equivalence("0.33", "1/3", allow_rounding=True) is True
    assert quick_equivalence("0.33", "1/3") is False
    assert quick_equivalence("0.13", "0.125", allow_rounding=True) is False
    assert quick_equivalence("0.34", "1/3", allow_rounding=True) is False


HOSTILE = [
    "9**9**9**9",
    "10^{10^{10^{10}}}",
    "9^{9^{9^{9^{9}}}}",
    "(10^{100})!",
    "{" * 5000 + "1" + "}" * 5000,
    r"\frac{" * 300 + "1" + "}{2}" * 300,
    "1+" * 500_000 + "1",  # 1 MB
    "x" * 1_000_000,
]


@pytest.fixture(scope="module")
def strict_checker():
    c = SymbolicChecker(EquivalenceConfig(timeout_s=2.0))
    yield c
    c.close()


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_answers_score_zero_within_the_time_limit(hostile, strict_checker):
    limit = strict_checker.config.timeout_s + 3.0  # + kill/respawn slack on a loaded machine
    start = time.monotonic()
    output = r"The answer is $\boxed{" + hostile + "}$"
    assert verify(output, "1", kind="math", checker=strict_checker) == 0.0
    assert time.monotonic() - start < limit
    start = time.monotonic()
    assert not is_equivalent("1", hostile, checker=strict_checker)
    assert time.monotonic() - start < limit


def test_hostile_one_megabyte_output_scores_zero_quickly():
    output = ("Let me think. " * 80_000)[:1_000_000] + r"\boxed{" + "9" * 10_000
    start = time.monotonic()
    assert verify(output, "9", kind="math") == 0.0
    assert verify(output, "9", kind="gsm8k") == 0.0
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "template",
    [
        "__import__('os').system('touch {marker}')",
        "().__class__.__base__.__subclasses__()[0]('touch {marker}')",
        "exec(\"open('{marker}','w').write('x')\")",
        "eval(\"__import__('os').system('touch {marker}')\")",
        "lambda: __import__('os').system('touch {marker}')",
    ],
)
def test_code_in_answers_is_never_executed(template, tmp_path, checker):
    marker = tmp_path / "pwned"
    payload = template.format(marker=marker)
    outputs = [payload, r"\boxed{" + payload + "}", "The answer is " + payload]
    for output in outputs:
        # golds that no digit of the payload (nor of tmp_path) can spell
        for kind, gold in [("math", "-987654321"), ("gsm8k", "-987654321"), ("choice", "A")]:
            assert verify(output, gold, kind=kind) == 0.0
        assert verify(output, r"\boxed{-987654321}", kind="auto") == 0.0
    assert not any(checker.check([(payload, "1"), ("1", payload), (payload, payload + " ")]))
    assert not marker.exists(), "model text was executed"


def test_a_check_past_the_hard_limit_kills_the_worker_and_the_checker_recovers():
    fast = SymbolicChecker(EquivalenceConfig(timeout_s=0.3))
    try:
        fast.start()
        pid_before = fast.worker_pids[0]
        start = time.monotonic()
        # the worker's own 1 s signal limit is longer than the 0.3 s hard limit
        assert fast.check([("9^{9^{9^{9}}}", "2")]) == [False]
        assert time.monotonic() - start < 0.3 + 1.0
        assert fast.timeouts == 1
        assert fast.worker_pids[0] != pid_before
        fast.config.timeout_s = 10.0  # generous again: the replacement worker answers
        assert fast.check([(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")]) == [True]
    finally:
        fast.close()


def test_batch_checks_run_on_several_workers_and_keep_order():
    pool = SymbolicChecker(EquivalenceConfig(num_workers=2))
    try:
        pairs = [(f"x+{i}", f"{i}+x") for i in range(6)] + [
            (f"x+{i}", f"{i + 1}+x") for i in range(6)
        ]
        assert pool.check(pairs) == [True] * 6 + [False] * 6
        assert len(pool.worker_pids) == 2
    finally:
        pool.close()


def test_are_equivalent_skips_the_symbolic_tier_when_told(checker):
    before = checker.checks
    assert are_equivalent([("x+1", "1+x")], checker=checker, symbolic=False) == [False]
    assert checker.checks == before


@pytest.mark.parametrize(
    ("printed", "latex"),
    [
        ("sqrt(2)/2", r"\sqrt{2}/2"),
        ("3*sqrt(3)", r"3*\sqrt{3}"),
        ("pi/4", r"\pi/4"),
        ("2**10", "2^{10}"),
        ("2**(1/2)", "2^{(1/2)}"),
        ("spin + x", "spin + x"),  # only whole names
        (r"\sqrt{2}", r"\sqrt{2}"),
    ],
)
def test_sympy_printing_is_read_as_latex(printed, latex):
    assert from_python(printed) == latex
