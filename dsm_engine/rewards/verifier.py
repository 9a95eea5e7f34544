"""Rule-based answer verification: the reward of outcome-supervised GRPO and the eval grader.

``verify(output, gold, kind)`` -> 1.0 / 0.0 for one model output; ``grade_batch`` grades many
at once (one pass through the time-limited symbolic checker) and keeps the extracted answers
for reports. ``RewardFn`` is the batch interface the GRPO trainer calls; ``VerifierReward`` is
its rule-based implementation, and learned reward models (ORM/PRM) implement the same
protocol and register themselves with ``register_reward_fn``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from dsm_engine.rewards.equivalence import (
    EquivalenceConfig,
    SymbolicChecker,
    are_equivalent,
)
from dsm_engine.rewards.extract import KINDS, extract_answer, extract_gold

__all__ = [
    "Grade",
    "RewardFn",
    "RewardModel",
    "VerifierConfig",
    "VerifierReward",
    "build_reward_fn",
    "detect_kind",
    "grade_batch",
    "register_reward_fn",
    "verify",
]


@dataclass
class Grade:
    """One graded output: the extracted answer, the reference answer and the verdict."""

    pred: str | list[str] | None
    gold: str | list[str]
    correct: bool


def detect_kind(gold: str) -> str:
    """Answer kind implied by a gold string: ``#### n`` -> gsm8k, ``\\boxed`` -> math, else
    a plain number -> number, else math."""
    if "####" in gold:
        return "gsm8k"
    if "\\boxed" in gold or "\\fbox" in gold:
        return "math"
    from dsm_engine.rewards.equivalence import parse_number

    return "number" if parse_number(gold) is not None else "math"


def grade_batch(
    outputs: Sequence[str],
    golds: Sequence[str],
    kind: str | Sequence[str] = "math",
    checker: SymbolicChecker | None = None,
    num_options: int = 4,
) -> list[Grade]:
    """Grade each output against its gold answer.

    outputs: model completions (full text; the final answer is extracted here).
    golds: reference answers: bare answers, GSM8K ``#### n`` solutions or MATH solutions.
    kind: one of ``gsm8k``, ``math``, ``number``, ``choice``, ``cloze`` or ``auto``
        (``detect_kind`` per gold), or one kind per item.
    checker: the caller's warm checker; without one, a checker is started for this call
        (only if an answer needs math-verify) and stopped before it returns.
    """
    if len(outputs) != len(golds):
        raise ValueError(f"outputs ({len(outputs)}) and golds ({len(golds)}) differ in length")
    kinds = [kind] * len(outputs) if isinstance(kind, str) else list(kind)
    if len(kinds) != len(outputs):
        raise ValueError(f"kind has {len(kinds)} entries for {len(outputs)} outputs")
    kinds = [detect_kind(g) if k == "auto" else k for k, g in zip(kinds, golds)]
    for k in set(kinds):
        if k not in KINDS:
            raise ValueError(f"unknown answer kind {k!r}; expected one of {KINDS} or 'auto'")

    grades: list[Grade] = []
    # pairs checked together: (pred, gold) and their owner; numeric kinds accept rounding
    numeric_pairs: list[tuple[str | None, str]] = []
    numeric_owner: list[int] = []
    symbolic_pairs: list[tuple[str | None, str]] = []
    symbolic_owner: list[int] = []
    for i, (output, gold, k) in enumerate(zip(outputs, golds, kinds)):
        gold_answer = extract_gold(gold, k)
        blanks = len(gold_answer) if isinstance(gold_answer, list) else 1
        pred = extract_answer(output, k, num_options=num_options, num_blanks=blanks)
        grade = Grade(pred=pred, gold=gold_answer, correct=False)
        grades.append(grade)
        if k == "choice":
            grade.correct = pred is not None and pred == gold_answer
        elif k == "cloze":
            if isinstance(pred, list) and len(pred) == len(gold_answer) and gold_answer:
                symbolic_pairs.extend(zip(pred, gold_answer))
                symbolic_owner.extend([i] * len(gold_answer))
        elif k == "math":
            symbolic_pairs.append((pred, gold_answer))
            symbolic_owner.append(i)
        else:
            numeric_pairs.append((pred, gold_answer))
            numeric_owner.append(i)

    with contextlib.nullcontext(checker) if checker is not None else SymbolicChecker() as checker:
        numeric = are_equivalent(numeric_pairs, checker=checker, allow_rounding=True)
        symbolic = are_equivalent(symbolic_pairs, checker=checker)
    for i, ok in zip(numeric_owner, numeric):
        grades[i].correct = ok
    verdict: dict[int, bool] = {}
    for i, ok in zip(symbolic_owner, symbolic):
        verdict[i] = verdict.get(i, True) and ok  # every blank of a cloze must be right
    for i, ok in verdict.items():
        grades[i].correct = ok
    return grades


def verify(
    output: str, gold: str, kind: str = "math", checker: SymbolicChecker | None = None
) -> float:
    """Reward of one output: 1.0 when its final answer equals ``gold``, else 0.0.

    kind: ``gsm8k`` (``#### n``/boxed/last number), ``math`` (last ``\\boxed{}``), ``number``
    (CMATH/MGSM), ``choice`` (letters), ``cloze`` (``;``-separated blanks) or ``auto``.
    Never raises on model text; hostile answers score 0.0 within the checker's time limit
    (``checker``: as for ``grade_batch``).
    """
    return 1.0 if grade_batch([output], [gold], kind, checker=checker)[0].correct else 0.0


@runtime_checkable
class RewardFn(Protocol):
    """Batch reward interface called by the GRPO trainer.

    ``score(prompts, outputs, golds)`` returns one float per output; ``prompts[i]`` is the
    prompt that produced ``outputs[i]`` and ``golds[i]`` its reference answer (a rule-based
    reward ignores prompts; a reward model reads them).
    """

    def score(
        self, prompts: Sequence[str], outputs: Sequence[str], golds: Sequence[str]
    ) -> list[float]: ...


@runtime_checkable
class RewardModel(RewardFn, Protocol):
    """A learned reward (ORM: one score per output; PRM: step scores reduced to one, e.g.
    the minimum). Same batch interface as ``RewardFn``, so the trainer treats both alike."""


@dataclass
class VerifierConfig:
    """Rule-based reward settings (YAML section of the GRPO config).

    kind: answer kind (``gsm8k``, ``math``, ``number``, ``choice``, ``cloze`` or ``auto``).
    correct_reward / wrong_reward: rewards for right and wrong (or unparsable) answers.
    timeout_s, num_workers: limits of the symbolic checker (see ``EquivalenceConfig``).
    """

    kind: str = "auto"
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    timeout_s: float = 5.0
    num_workers: int = 1


class VerifierReward:
    """``RewardFn`` that grades final answers with ``grade_batch``.

    Without ``checker`` it owns one (``config.timeout_s`` / ``num_workers``, workers started on
    first use) and ``close()`` or the end of a ``with`` block stops it; a checker passed in
    belongs to the caller and is left running.
    """

    def __init__(
        self, config: VerifierConfig | None = None, checker: SymbolicChecker | None = None
    ):
        self.config = config or VerifierConfig()
        if self.config.kind not in (*KINDS, "auto"):
            raise ValueError(f"VerifierConfig.kind {self.config.kind!r} not in {KINDS} or 'auto'")
        self._owns_checker = checker is None
        self.checker = checker or SymbolicChecker(
            EquivalenceConfig(timeout_s=self.config.timeout_s, num_workers=self.config.num_workers)
        )
        self.last_grades: list[Grade] = []

    def __enter__(self) -> VerifierReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the checker's workers if this reward owns it."""
        if self._owns_checker:
            self.checker.close()

    def score(
        self, prompts: Sequence[str], outputs: Sequence[str], golds: Sequence[str]
    ) -> list[float]:
        """1 reward per output (``correct_reward``/``wrong_reward``); prompts are unused."""
        if len(prompts) != len(outputs):
            raise ValueError(f"prompts ({len(prompts)}) and outputs ({len(outputs)}) differ")
        self.last_grades = grade_batch(outputs, golds, self.config.kind, checker=self.checker)
        c = self.config
        return [c.correct_reward if g.correct else c.wrong_reward for g in self.last_grades]


_REGISTRY: dict[str, Callable[..., RewardFn]] = {
    "verifier": lambda **kw: VerifierReward(VerifierConfig(**kw)),
}


def register_reward_fn(name: str, factory: Callable[..., RewardFn]) -> None:
    """Make ``build_reward_fn(name, **kwargs)`` call ``factory(**kwargs)`` (ORM/PRM hook)."""
    _REGISTRY[name] = factory


def build_reward_fn(name: str = "verifier", **kwargs) -> RewardFn:
    """Construct a registered reward: ``verifier`` (rule-based) or one registered later."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
