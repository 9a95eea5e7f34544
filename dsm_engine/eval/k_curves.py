"""Pass@K and Maj@K as curves over K, from N graded samples per question (paper Figure 7).

DeepSeekMath (§5.2.2, Figure 7) compares a policy before and after RL by both curves: RL that
only sharpens the output distribution raises Maj@K (the majority of K samples is right more
often) while leaving Pass@K (some of K samples is right) where it was.

Pass@K uses the unbiased estimator of ``scoring.pass_at_k``. Maj@K has no closed form: it is the
expectation, over K-subsets of the N samples, of "the majority answer of the subset is right",
computed exactly by enumeration when there are few subsets and otherwise estimated from
``draws`` random subsets (seeded; the standard error is at most ``0.5 / sqrt(draws)`` per
question). Answers vote by their canonical key (``scoring.majority_vote`` without symbolic
merging, which is exact for the numeric answers these curves are drawn for); ties go to the
answer that appears first in the subset.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from dsm_engine.eval.scoring import Answer, majority_vote, pass_at_k


@dataclass(frozen=True)
class SampledQuestion:
    """The N sampled answers of one question and whether each is correct."""

    answers: Sequence[Answer]
    corrects: Sequence[bool]

    def __post_init__(self) -> None:
        if len(self.answers) != len(self.corrects):
            raise ValueError(
                f"answers has {len(self.answers)} entries but corrects has {len(self.corrects)}"
            )
        if not self.answers:
            raise ValueError("a sampled question needs at least one sample")


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"K must be in [1, {n}] (the samples per question), got {k}")


def majority_correct(question: SampledQuestion, subset: Sequence[int]) -> bool:
    """Whether the majority answer of the samples ``subset`` (indices) is a correct one."""
    winner, votes = majority_vote([question.answers[i] for i in subset], symbolic=False)
    return votes > 0 and bool(question.corrects[subset[winner]])


def maj_at_k(
    question: SampledQuestion, k: int, *, draws: int = 256, rng: random.Random | None = None
) -> float:
    """Probability that the majority of K of the question's samples is right: exact over all
    K-subsets when there are at most ``draws`` of them, else the mean over ``draws`` random
    K-subsets (in random order, so ties are broken at random)."""
    n = len(question.answers)
    _check_k(k, n)
    if math.comb(n, k) <= draws:
        subsets: Sequence[Sequence[int]] = list(itertools.combinations(range(n), k))
    else:
        rng = rng or random.Random(0)
        subsets = [rng.sample(range(n), k) for _ in range(draws)]
    return sum(majority_correct(question, s) for s in subsets) / len(subsets)


def k_curves(
    questions: Sequence[SampledQuestion],
    ks: Sequence[int],
    *,
    draws: int = 256,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """``{"pass": {K: Pass@K}, "maj": {K: Maj@K}}`` averaged over ``questions`` (fractions)."""
    if not questions:
        raise ValueError("k_curves needs at least one question")
    n = min(len(q.answers) for q in questions)
    for k in ks:
        _check_k(k, n)
    rng = random.Random(seed)
    passes = {
        k: sum(pass_at_k(len(q.corrects), sum(map(bool, q.corrects)), k) for q in questions)
        / len(questions)
        for k in ks
    }
    majs = {
        k: sum(maj_at_k(q, k, draws=draws, rng=rng) for q in questions) / len(questions) for k in ks
    }
    return {"pass": passes, "maj": majs}
