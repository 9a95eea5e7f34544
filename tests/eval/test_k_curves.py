"""Pass@K and Maj@K curves (paper Figure 7): against brute force over every K-subset."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from dsm_engine.eval.k_curves import SampledQuestion, k_curves, maj_at_k


def _brute_maj(answers, corrects, k):
    """Fraction of K-subsets (in index order) whose plurality answer is correct, ties to the
    answer seen first in the subset; an independent count, not the module's vote."""
    wins = total = 0
    for subset in itertools.combinations(range(len(answers)), k):
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        total += 1
        if not votes:
            continue
        top = max(votes.values())
        first = next(i for i in subset if answers[i] is not None and votes[answers[i]] == top)
        wins += corrects[first]
    return wins / total


def _brute_pass(corrects, k):
    subsets = list(itertools.combinations(range(len(corrects)), k))
    return sum(any(corrects[i] for i in s) for s in subsets) / len(subsets)


def _random_question(rng: random.Random, n: int) -> SampledQuestion:
    answers = [rng.choice(["7", "12", "5", None]) for _ in range(n)]
    return SampledQuestion(answers, [a == "7" for a in answers])


def test_maj_and_pass_equal_the_brute_force_count_over_every_subset():
    rng = random.Random(0)
    questions = [_random_question(rng, 8) for _ in range(6)]
    curves = k_curves(questions, ks=(1, 2, 3, 5, 8), draws=10_000)  # C(8, k) <= 70: exact
    for k in (1, 2, 3, 5, 8):
        maj = sum(_brute_maj(q.answers, q.corrects, k) for q in questions) / len(questions)
        pas = sum(_brute_pass(q.corrects, k) for q in questions) / len(questions)
        assert curves["maj"][k] == pytest.approx(maj, abs=1e-12)
        assert curves["pass"][k] == pytest.approx(pas, abs=1e-12)


def test_maj_at_1_is_the_mean_accuracy_and_pass_never_falls_with_k():
    rng = random.Random(1)
    questions = [_random_question(rng, 16) for _ in range(10)]
    curves = k_curves(questions, ks=(1, 2, 4, 8, 16), draws=400)
    mean_acc = sum(sum(q.corrects) / 16 for q in questions) / 10
    assert curves["maj"][1] == pytest.approx(mean_acc, abs=0.03)
    assert curves["pass"][1] == pytest.approx(mean_acc, abs=1e-12)
    passes = [curves["pass"][k] for k in (1, 2, 4, 8, 16)]
    assert passes == sorted(passes)


def test_sampled_maj_at_k_is_close_to_the_exact_value_when_subsets_are_many():
    rng = random.Random(2)
    q = _random_question(rng, 12)
    exact = _brute_maj(q.answers, q.corrects, 5)  # C(12, 5) = 792 subsets
    estimate = maj_at_k(q, 5, draws=4000, rng=random.Random(3))
    assert estimate == pytest.approx(exact, abs=4 * 0.5 / 4000**0.5)


def test_a_sharper_distribution_raises_maj_but_not_pass():
    """The paper's reading of Figure 7 in miniature: the same answers, the right one made
    more frequent among the wrong ones, raise Maj@K; Pass@K at large K stays at 1."""
    spread = SampledQuestion(["3", "3", "3", "4", "4", "4", "7", "7"], [False] * 6 + [True] * 2)
    sharp = SampledQuestion(["3", "4", "7", "7", "7", "7", "7", "7"], [False] * 2 + [True] * 6)
    before, after = k_curves([spread], ks=(8,)), k_curves([sharp], ks=(8,))
    assert before["maj"][8] == 0.0 and after["maj"][8] == 1.0
    assert before["pass"][8] == after["pass"][8] == 1.0


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="answers has 2 entries but corrects has 1"):
        SampledQuestion(["1", "2"], [True])
    with pytest.raises(ValueError, match=r"K must be in \[1, 4\]"):
        k_curves([SampledQuestion(["1"] * 4, [True] * 4)], ks=(8,))
