"""Rewards: rule-based answer verification (GRPO outcome reward, eval grader) and the
batch reward interface that learned reward models implement.

GRPO trainer entry points::

    from dsm_engine.rewards import build_reward_fn, verify
    reward_fn = build_reward_fn("verifier", kind="auto")      # a RewardFn
    rewards = reward_fn.score(prompts, outputs, golds)        # list[float], 1.0 / 0.0
    verify(output, "#### 18", kind="gsm8k")                  # one output -> float

What counts as equal (normalisations) and what the grader guarantees (no credit for a free
variable, a hedge, a second value, a division by zero or an overflow; size limits before any
evaluation): ``dsm_engine.rewards.equivalence``.
"""

from dsm_engine.rewards.equivalence import (
    EquivalenceConfig,
    SymbolicChecker,
    are_equivalent,
    is_equivalent,
    normalize_answer,
)
from dsm_engine.rewards.extract import extract_answer, extract_gold
from dsm_engine.rewards.verifier import (
    Grade,
    RewardFn,
    RewardModel,
    VerifierConfig,
    VerifierReward,
    build_reward_fn,
    grade_batch,
    register_reward_fn,
    verify,
)

__all__ = [
    "EquivalenceConfig",
    "Grade",
    "RewardFn",
    "RewardModel",
    "SymbolicChecker",
    "VerifierConfig",
    "VerifierReward",
    "are_equivalent",
    "build_reward_fn",
    "extract_answer",
    "extract_gold",
    "grade_batch",
    "is_equivalent",
    "normalize_answer",
    "register_reward_fn",
    "verify",
]
