"""The verifier on the real benchmarks, and the reward interface the GRPO trainer calls."""

from __future__ import annotations

import json
import re

import pytest

from dsm_engine.rewards import (
    RewardFn,
    RewardModel,
    VerifierConfig,
    VerifierReward,
    build_reward_fn,
    grade_batch,
    register_reward_fn,
    verify,
)
from dsm_engine.rewards.equivalence import EquivalenceConfig, SymbolicChecker
from dsm_engine.rewards.extract import find_last_boxed


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def math_rows(shared_data):
    return _rows(shared_data / "benchmarks" / "math" / "test.jsonl")


@pytest.fixture(scope="module")
def checker():
    c = SymbolicChecker(EquivalenceConfig(num_workers=2))
    yield c
    c.close()


def test_every_gsm8k_test_answer_is_right_against_itself(shared_data):
    rows = _rows(shared_data / "benchmarks" / "gsm8k" / "test.jsonl")
    answers = [r["answer"] for r in rows]
    assert len(answers) == 1319
    assert all(g.correct for g in grade_batch(answers, answers, "gsm8k"))
    # and in the paper's CoT output format
    finals = [a.rsplit("####", 1)[1].strip() for a in answers]
    outputs = [f"Reasoning.\nThe answer is \\boxed{{{f}}}." for f in finals]
    assert all(g.correct for g in grade_batch(outputs, answers, "gsm8k"))


def test_gsm8k_perturbed_answers_are_wrong(shared_data):
    rows = _rows(shared_data / "benchmarks" / "gsm8k" / "test.jsonl")[:300]
    golds = [r["answer"] for r in rows]
    values = [int(g.rsplit("####", 1)[1].replace(",", "")) for g in golds]
    for perturb in (lambda v: v + 1, lambda v: v - 1, lambda v: -v if v else 1):
        outputs = [f"#### {perturb(v)}" for v in values]
        assert not any(g.correct for g in grade_batch(outputs, golds, "gsm8k"))


def test_every_math_test_solution_is_right_against_its_own_boxed_answer(math_rows):
    solutions = [r["solution"] for r in math_rows]
    assert len(solutions) == 5000
    grades = grade_batch(solutions, solutions, "math")
    assert sum(g.correct for g in grades) / len(grades) >= 0.995


def _reformat(answer: str) -> str:
    """An equivalent rendering: other fraction commands, spaces, dollars, \\left/\\right."""
    out = answer.replace("\\frac", "\\dfrac").replace("(", "\\left(").replace(")", "\\right)")
    out = out.replace(",", ", ").replace("+", " + ")
    return f"${out}$"


def test_every_math_answer_is_right_against_a_reformatted_copy(math_rows):
    golds = [r["solution"] for r in math_rows]
    outputs = [f"So the answer is \\boxed{{{_reformat(find_last_boxed(s))}}}." for s in golds]
    grades = grade_batch(outputs, golds, "math")
    assert sum(g.correct for g in grades) / len(grades) >= 0.995


def test_math_answers_pass_the_symbolic_tier_against_themselves(math_rows, checker):
    # every 10th answer through math-verify itself (the quick tier is bypassed)
    answers = [find_last_boxed(r["solution"]) for r in math_rows[::10]]
    verdicts = checker.check([(a, a) for a in answers])
    assert sum(verdicts) / len(verdicts) >= 0.99


def test_math_answers_with_one_digit_changed_are_wrong(math_rows, checker):
    outputs, golds = [], []
    for row in math_rows[::10]:
        answer = find_last_boxed(row["solution"])
        digits = list(re.finditer(r"\d", answer))
        if digits:
            k = digits[-1].start()
            changed = answer[:k] + str((int(answer[k]) + 1) % 10) + answer[k + 1 :]
            outputs.append(f"\\boxed{{{changed}}}")
            golds.append(row["solution"])
    grades = grade_batch(outputs, golds, "math", checker=checker)
    assert len(grades) > 400
    assert sum(g.correct for g in grades) / len(grades) <= 0.01


def test_math500_solutions_match_their_answer_field(shared_data):
    rows = _rows(shared_data / "benchmarks" / "math500" / "test.jsonl")
    grades = grade_batch([r["solution"] for r in rows], [r["answer"] for r in rows], "math")
    assert sum(g.correct for g in grades) / len(grades) >= 0.995


def test_verify_returns_float_rewards_per_kind():
    assert verify("so \\boxed{\\dfrac12}", "$\\boxed{0.5}$", kind="math") == 1.0
    assert verify("The answer is 18.", "...\n#### 18", kind="gsm8k") == 1.0
    assert verify("答案是 0.2", "1/5", kind="number") == 1.0
    assert verify("故选 B", "B", kind="choice") == 1.0
    assert verify("故选 B", "AB", kind="choice") == 0.0
    assert verify("\\boxed{5} 和 \\boxed{10}", "$5$;$10$", kind="cloze") == 1.0
    assert verify("\\boxed{5} 和 \\boxed{11}", "$5$;$10$", kind="cloze") == 0.0
    assert verify("The answer is 7", "#### 7", kind="auto") == 1.0


def test_verifier_reward_implements_the_batch_reward_interface():
    reward = build_reward_fn("verifier", kind="gsm8k", correct_reward=1.0, wrong_reward=-0.5)
    assert isinstance(reward, RewardFn) and isinstance(reward, RewardModel)
    scores = reward.score(
        ["q1", "q2", "q3"], ["#### 3", "\\boxed{4}", "no idea"], ["3", "#### 5", "1"]
    )
    assert scores == [1.0, -0.5, -0.5]
    assert [g.pred for g in reward.last_grades] == ["3", "4", None]
    with pytest.raises(ValueError, match="differ"):
        reward.score(["q"], ["a", "b"], ["1", "2"])
    with pytest.raises(ValueError, match="kind"):
        VerifierReward(VerifierConfig(kind="essay"))


def test_reward_models_plug_in_through_the_registry():
    class LengthReward:
        def score(self, prompts, outputs, golds):
            return [float(len(o)) for o in outputs]

    register_reward_fn("length-test", lambda **kw: LengthReward())
    reward = build_reward_fn("length-test")
    assert isinstance(reward, RewardFn)
    assert reward.score(["p"], ["abc"], ["g"]) == [3.0]
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward_fn("nope")
