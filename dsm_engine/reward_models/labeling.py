"""Reward-model labels produced by the engine itself.

* ORM: sample responses from the policy; the verifier grades each final answer (1 / 0).
* PRM (Math-Shepherd style Monte-Carlo completion): for every step of a sampled response, roll
  out K completions from the prefix that ends with that step; the step is good (1) when at
  least one completion reaches the gold answer. The last step's label is the verdict on the
  response itself (its only "completion").

Sampling goes through a ``RolloutEngine`` (``hf`` or ``vllm``), so labelling runs wherever
rollouts run. Output rows follow ``dsm_engine.reward_models.data`` (token ids plus text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsm_engine.reward_models.step_split import DEFAULT_DELIMITER, find_step_ends
from dsm_engine.rollout.base import RolloutEngine, SamplingParams

if TYPE_CHECKING:
    from dsm_engine.rewards.checker import SymbolicChecker

Grader = Callable[[Sequence[str], Sequence[str]], list[bool]]


@dataclass
class LabelPrompt:
    """A prompt to label: token ids, its text and the gold answer."""

    token_ids: list[int]
    text: str
    gold: str


def verifier_grader(kind: str = "auto", checker: SymbolicChecker | None = None) -> Grader:
    """``grade(outputs, golds) -> [correct, ...]`` with the rule-based verifier. ``checker``:
    the caller's (kept warm across calls); without one each call starts and stops its own."""
    from dsm_engine.rewards import grade_batch

    def grade(outputs: Sequence[str], golds: Sequence[str]) -> list[bool]:
        grades = grade_batch(list(outputs), list(golds), kind, checker=checker)
        return [g.correct for g in grades]

    return grade


def sample_and_grade(
    engine: RolloutEngine,
    prompts: Sequence[LabelPrompt],
    n: int,
    params: SamplingParams,
    decode: Callable[[list[int]], str],
    grade: Grader,
) -> list[dict[str, Any]]:
    """``n`` responses per prompt with ORM labels (1.0 when the final answer is correct)."""
    ro = engine.generate([p.token_ids for p in prompts], n, params)
    texts = [decode(ids) for ids in ro.token_ids]
    golds = [prompts[i].gold for i in ro.prompt_index]
    verdict = grade(texts, golds)
    rows = []
    for ids, text, i, ok in zip(ro.token_ids, texts, ro.prompt_index, verdict):
        if not ids:
            continue
        p = prompts[i]
        rows.append(
            {
                "prompt_ids": list(p.token_ids),
                "response_ids": list(ids),
                "label": 1.0 if ok else 0.0,
                "prompt": p.text,
                "response": text,
                "gold": p.gold,
            }
        )
    return rows


def monte_carlo_step_labels(
    engine: RolloutEngine,
    rows: Sequence[dict[str, Any]],
    k: int,
    params: SamplingParams,
    decode: Callable[[list[int]], str],
    grade: Grader,
    delimiter: str = DEFAULT_DELIMITER,
) -> list[dict[str, Any]]:
    """Add ``step_ends`` / ``step_labels`` to ORM-labelled ``rows`` by K completions per step.

    All prefixes of all rows go to the engine in one call (rows ``i*k .. i*k+k-1`` complete
    prefix ``i``); each completion may use the budget the response had left at that step.
    """
    prefixes, owners = [], []
    out = []
    for r, row in enumerate(rows):
        ends = find_step_ends(row["response_ids"], decode, delimiter)
        out.append({**row, "step_ends": ends, "step_labels": [0.0] * len(ends)})
        for j, e in enumerate(ends[:-1]):
            prefixes.append(list(row["prompt_ids"]) + list(row["response_ids"][: e + 1]))
            owners.append((r, j, e))
    for row in out:
        if row["step_ends"]:
            row["step_labels"][-1] = row["label"]
    if prefixes:
        ro = engine.generate(prefixes, k, params)
        texts, golds = [], []
        for q, ids in enumerate(ro.token_ids):
            r, j, e = owners[ro.prompt_index[q]]
            texts.append(decode(list(rows[r]["response_ids"][: e + 1]) + list(ids)))
            golds.append(rows[r]["gold"])
        verdict = grade(texts, golds)
        for q, ok in enumerate(verdict):
            r, j, _ = owners[ro.prompt_index[q]]
            if ok:
                out[r]["step_labels"][j] = 1.0
    return [row for row in out if row["step_ends"]]
