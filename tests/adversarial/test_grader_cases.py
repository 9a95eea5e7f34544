"""The grader on its labelled adversarial set (grader_cases.yaml): every case graded right.

The set holds the false-credit cases of issue 23 (``\\boxed{x+18}`` against ``#### 18``,
``\\frac{1}{0}`` against 0, power towers, code, ``1e999999999``), their kin, and equal forms
that must keep full credit (fractions, percents, units, thousands separators, Chinese
numerals, intervals, sets, choice letters, cloze blanks).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from dsm_engine.rewards import grade_batch
from dsm_engine.rewards.equivalence import EquivalenceConfig, SymbolicChecker, quick_equivalence
from dsm_engine.rewards.extract import KINDS, extract_answer, extract_gold

CASES_PATH = Path(__file__).with_name("grader_cases.yaml")
FIELDS = {"cat": str, "kind": str, "ref": str, "out": str, "ok": bool, "why": str}
# rejected by size (or as no number) before anything is evaluated
SCREENED = {"size", "overflow", "zero-division"}


def load_cases(path: Path = CASES_PATH) -> list[dict]:
    """The labelled cases; a malformed one fails naming its position and field."""
    cases = yaml.safe_load(path.read_text(encoding="utf-8"))
    for i, case in enumerate(cases, 1):
        for field, kind in FIELDS.items():
            if not isinstance(case.get(field), kind):
                raise ValueError(
                    f"{path.name}: case {i}: field {field!r} must be a {kind.__name__}"
                )
        if case["kind"] not in (*KINDS, "auto"):
            raise ValueError(f"{path.name}: case {i}: unknown kind {case['kind']!r}")
    return cases


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return load_cases()


@pytest.fixture(scope="module")
def checker():
    c = SymbolicChecker(EquivalenceConfig(timeout_s=10.0))
    yield c
    c.close()


def test_the_set_is_large_distinct_and_labelled_both_ways(cases):
    assert len(cases) >= 200
    keys = Counter((c["kind"], c["ref"], c["out"]) for c in cases)
    assert [k for k, n in keys.items() if n > 1] == []
    labels = Counter(c["ok"] for c in cases)
    assert labels[True] >= 60 and labels[False] >= 100


def test_every_case_is_graded_right_without_hitting_the_time_limit(cases, checker):
    grades = grade_batch(
        [c["out"] for c in cases],
        [c["ref"] for c in cases],
        [c["kind"] for c in cases],
        checker=checker,
    )
    wrong = [
        f"{c['cat']}/{c['kind']}: {c['out']!r} vs {c['ref']!r} -> {g.correct} ({c['why']})"
        for c, g in zip(cases, grades)
        if g.correct != c["ok"]
    ]
    assert wrong == []
    assert checker.timeouts == 0  # hostile answers are refused, not waited out


def test_oversized_and_undefined_answers_are_refused_before_evaluation(cases):
    screened = [c for c in cases if c["cat"] in SCREENED]
    assert len(screened) >= 20
    for case in screened:
        kind = "math" if case["kind"] == "auto" and "####" not in case["ref"] else case["kind"]
        kind = "gsm8k" if kind == "auto" else kind
        pred = extract_answer(case["out"], kind)
        gold = extract_gold(case["ref"], kind)
        # False from the quick tier: no worker (and no SymPy) ever sees the pair
        assert quick_equivalence(pred, gold) is False, case
