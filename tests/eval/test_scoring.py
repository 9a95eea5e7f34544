"""Majority vote over equivalent answers, pass@k and summaries."""

from __future__ import annotations

import pytest

from dsm_engine.eval.scoring import majority_vote, pass_at_k, summarize


def test_majority_vote_groups_equivalent_answers():
    answers = ["2", "0.5", r"\frac{1}{2}", "2", "1/2", None]
    winner, votes = majority_vote(answers)
    assert votes == 3 and answers[winner] == "0.5"


def test_majority_vote_merges_symbolically_equal_forms():
    answers = ["x+1", "1+x", "(x+1)", "3", "3"]
    winner, votes = majority_vote(answers)
    assert votes == 3 and winner == 0


def test_majority_vote_ties_go_to_the_earliest_answer_deterministically():
    assert majority_vote(["7", "5", "5", "7"]) == (0, 2)
    assert majority_vote(["5", "7", "7", "5"]) == (0, 2)
    assert majority_vote(["9", "8", "7"]) == (0, 1)
    for _ in range(3):
        assert majority_vote(["b", "a", "a", "b", "c"], symbolic=False) == (0, 2)


def test_majority_vote_without_any_answer():
    assert majority_vote([None, None, ""]) == (None, 0)


def test_pass_at_k_matches_the_combinatorial_definition():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 3, 3) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_summaries_report_percentages():
    greedy = [{"correct": True}, {"correct": False}, {"correct": True}, {"correct": True}]
    assert summarize(greedy, 1) == {"n": 4, "pass@1": 75.0}
    sampled = [
        {"corrects": [True, False], "maj_correct": True},
        {"corrects": [False, False], "maj_correct": False},
    ]
    assert summarize(sampled, 2) == {"n": 2, "pass@1": 25.0, "maj@2": 50.0, "pass@2": 50.0}
