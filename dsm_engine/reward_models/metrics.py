"""Reward-model metrics: accuracy at a threshold and ROC AUC (ties count one half)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accuracy(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.0) -> float:
    """Share of examples with ``(score > threshold) == (label >= 0.5)``.

    ``scores`` are logits (threshold 0 = probability 0.5). Returns nan for no examples.
    """
    s, y = _as_tensors(scores, labels)
    if s.numel() == 0:
        return float("nan")
    return float(((s > threshold) == (y >= 0.5)).double().mean())


def _as_tensors(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(list(scores), dtype=torch.float64).flatten()
    y = torch.as_tensor(list(labels), dtype=torch.float64).flatten()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.numel()}) and labels ({y.numel()}) differ in length")
    return s, y


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """ROC AUC: P(score of a random positive > score of a random negative), ties = 1/2.

    Computed from average ranks (Mann-Whitney U) in O(n log n). Labels >= 0.5 are positives.
    Returns nan when either class is absent.
    """
    s, y = _as_tensors(scores, labels)
    pos = y >= 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    # average 1-based rank over each run of equal scores
    uniq, inverse, counts = torch.unique_consecutive(
        sorted_s, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def auc_bruteforce(scores: Sequence[float], labels: Sequence[float]) -> float:
    """O(n²) pairwise AUC (the definition), the reference for :func:`auc`."""
    s, y = _as_tensors(scores, labels)
    p, n = s[y >= 0.5].tolist(), s[y < 0.5].tolist()
    if not p or not n:
        return float("nan")
    total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in p for b in n)
    return total / (len(p) * len(n))
