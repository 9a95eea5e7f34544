"""Metrics: greedy pass@1, maj@N (self-consistency) and pass@N.

Majority voting groups answers that are *equivalent* (the verifier's equivalence, not string
identity: ``0.5`` and ``\\frac{1}{2}`` vote together). Ties go to the group whose first member
appears earliest among the samples, so the result never depends on hashing or timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

from dsm_engine.rewards.equivalence import (
    SymbolicChecker,
    are_equivalent,
    normalize_answer,
    parse_number,
)

__all__ = ["majority_vote", "pass_at_k", "summarize"]

Answer = str | list[str] | None


def _key(answer: Answer) -> str | None:
    """Cheap canonical key: equal keys are certainly equivalent answers."""
    if answer is None or answer == [] or answer == "":
        return None
    if isinstance(answer, list):
        return "\x1f".join(normalize_answer(a) for a in answer)
    value = parse_number(answer)
    return f"#{value}" if value is not None else normalize_answer(answer)


def majority_vote(
    answers: Sequence[Answer],
    symbolic: bool = True,
    checker: SymbolicChecker | None = None,
    max_groups: int = 24,
) -> tuple[int | None, int]:
    """Index of a representative of the most voted equivalence group, and its vote count.

    answers: extracted answers of the N samples (None = no answer, never voted for).
    symbolic: merge groups whose representatives math-verify proves equivalent (only the
        ``max_groups`` largest groups are compared pairwise; the rest keep their own vote).
    Returns ``(None, 0)`` when no sample has an answer.
    """
    groups: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        key = _key(answer)
        if key is not None:
            groups.setdefault(key, []).append(i)
    if not groups:
        return None, 0
    # larger groups first, then earlier first member: deterministic order
    ordered = sorted(groups.values(), key=lambda members: (-len(members), members[0]))
    if symbolic and len(ordered) > 1:
        head = ordered[:max_groups]
        texts = [answers[m[0]] for m in head]
        if all(isinstance(t, str) for t in texts):
            pairs = [
                (texts[a], texts[b]) for a in range(len(head)) for b in range(a + 1, len(head))
            ]
            verdicts = iter(are_equivalent(pairs, checker=checker))
            parent = list(range(len(head)))

            def find(x: int) -> int:
                while parent[x] != x:
                    x = parent[x]
                return x

            for a in range(len(head)):
                for b in range(a + 1, len(head)):
                    if next(verdicts):
                        ra, rb = find(a), find(b)
                        parent[max(ra, rb)] = min(ra, rb)
            merged: dict[int, list[int]] = {}
            for g, members in enumerate(head):
                merged.setdefault(find(g), []).extend(members)
            ordered = [sorted(m) for m in merged.values()] + ordered[max_groups:]
    best = min(ordered, key=lambda members: (-len(members), members[0]))
    return best[0], len(best)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al., 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarize(records: Sequence[dict], num_samples: int) -> dict[str, float]:
    """Benchmark metrics (percent) from per-question records.

    Greedy records carry ``correct``; sampled ones ``corrects`` (list) and ``maj_correct``.
    """
    n = len(records)
    if n == 0:
        return {"n": 0}
    if num_samples <= 1:
        return {"n": n, "pass@1": 100.0 * sum(bool(r["correct"]) for r in records) / n}
    mean_acc = sum(sum(r["corrects"]) / len(r["corrects"]) for r in records) / n
    return {
        "n": n,
        "pass@1": 100.0 * mean_acc,
        f"maj@{num_samples}": 100.0 * sum(bool(r["maj_correct"]) for r in records) / n,
        f"pass@{num_samples}": 100.0 * sum(any(r["corrects"]) for r in records) / n,
    }
