"""Reward-model losses: binary cross-entropy on scalar scores at chosen token positions.

* ORM (outcome): one label per sample (1 = the final answer is correct), scored at the last
  response token.
* PRM (process): one label per reasoning step (1 = a good step), scored at each step-end token.

Both are :func:`bce_at_positions` with different positions. Scores are logits ``(B, T)`` (the
scalar head's output at every position); positions index the full ``prompt + response`` row.
Losses return the *sum* over labelled positions and their count, so a trainer can normalise
over a whole global batch spread across microbatches and data-parallel ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(scores: Tensor, positions: Tensor, labels: Tensor, mask: Tensor | None) -> None:
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a floating (B, T) tensor, got {tuple(scores.shape)}")
    if positions.shape != labels.shape or positions.shape[0] != scores.shape[0]:
        raise ValueError(
            f"positions {tuple(positions.shape)} and labels {tuple(labels.shape)} must share a "
            f"shape whose first dim is the batch {scores.shape[0]}"
        )
    if mask is not None and mask.shape != positions.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match positions {tuple(positions.shape)}")
    if positions.is_floating_point():
        raise ValueError(f"positions must be integer, got {positions.dtype}")
    valid = positions if mask is None else positions[mask.bool()]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= scores.shape[1]):
        raise ValueError(f"positions must lie in [0, T={scores.shape[1]})")


def gather_scores(scores: Tensor, positions: Tensor) -> Tensor:
    """``scores[b, positions[b, j]]``: ``(B, T)`` x ``(B, S)`` -> ``(B, S)`` (differentiable)."""
    return scores.gather(1, positions.clamp(min=0).long())


def bce_at_positions(
    scores: Tensor, positions: Tensor, labels: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Summed binary cross-entropy of ``sigmoid(scores)`` at ``positions`` against ``labels``.

    scores: ``(B, T)`` logits (any float dtype; computed in fp32, fp64 stays fp64).
    positions: ``(B, S)`` integer token positions; labels: ``(B, S)`` in [0, 1] (soft labels
    allowed); mask: ``(B, S)`` bool, which entries are labelled (default: all).
    Returns ``(loss_sum, count)``: the summed loss (scalar) and the number of labelled entries.
    """
    _check(scores, positions, labels, mask)
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    z = gather_scores(scores, positions).to(dtype)
    per = F.binary_cross_entropy_with_logits(z, labels.to(dtype), reduction="none")
    if mask is None:
        return per.sum(), torch.tensor(per.numel(), dtype=dtype)
    m = mask.bool()
    return torch.where(m, per, torch.zeros_like(per)).sum(), m.sum().to(dtype)


def bce_at_positions_ref(
    scores: Tensor, positions: Tensor, labels: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """fp64 reference of :func:`bce_at_positions` written out: ``-y log s - (1-y) log(1-s)``."""
    z = scores.double()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for b in range(positions.shape[0]):
        for j in range(positions.shape[1]):
            if mask is not None and not bool(mask[b, j]):
                continue
            s = torch.sigmoid(z[b, int(positions[b, j])])
            y = float(labels[b, j])
            total = total - (y * torch.log(s) + (1 - y) * torch.log1p(-s))
            count += 1
    return total, torch.tensor(float(count), dtype=torch.float64)


def orm_loss(scores: Tensor, last_index: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """ORM loss sum and count: BCE at each sample's last response token.

    last_index: ``(B,)`` position of the last response token; labels: ``(B,)`` 1.0 correct /
    0.0 incorrect.
    """
    return bce_at_positions(scores, last_index[:, None], labels[:, None])


def prm_loss(
    scores: Tensor, step_positions: Tensor, step_labels: Tensor, step_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """PRM loss sum and count: BCE at every step-end token.

    step_positions: ``(B, S)`` positions of step-end tokens in the row; step_labels: ``(B, S)``
    1.0 good / 0.0 bad step; step_mask: ``(B, S)`` bool, which steps exist.
    """
    return bce_at_positions(scores, step_positions, step_labels, step_mask)
