"""DPO (Rafailov et al. 2023) on verifier-labelled samples of the SFT policy, as a gradient
coefficient (DeepSeekMath §5.2.1, Table 10).

Pairs ``(o+, o-)`` of one prompt are a correct and a wrong sample from the same group. With
``Δ = log πθ(o) - log πref(o)`` (summed over the response tokens) the loss of a pair is
``-log σ(β (Δ+ - Δ-))``; its gradient is ``-β σ(β (Δ- - Δ+)) (∇ log πθ(o+) - ∇ log πθ(o-))``,
so the gradient coefficient is ``+β σ(β (Δ- - Δ+))`` on every token of ``o+`` and the
negative of it on every token of ``o-``. The reference's log-probs are computed once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def select_pairs(
    correct: Tensor, group_size: int, *, pairs_per_prompt: int = 1, seed: int = 0
) -> Tensor:
    """``(P, 2)`` int64 row indices ``(chosen, rejected)``: for each group (``group_size``
    consecutive rows of one prompt) with at least one correct and one wrong sample, up to
    ``pairs_per_prompt`` distinct pairs drawn at random (seeded); groups of one label give none.

    correct: ``(B,)`` bool, the verifier's label of each sample.
    """
    if correct.dim() != 1 or correct.shape[0] % group_size:
        raise ValueError(f"correct {tuple(correct.shape)} is not groups of {group_size} rows")
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, correct.shape[0], group_size):
        rows = torch.arange(start, start + group_size)
        good, bad = rows[correct[rows].cpu()], rows[~correct[rows].cpu()]
        if len(good) == 0 or len(bad) == 0:
            continue
        every = torch.cartesian_prod(good, bad)  # (|good| * |bad|, 2)
        pick = torch.randperm(len(every), generator=g)[:pairs_per_prompt]
        out.append(every[pick])
    return torch.cat(out) if out else torch.zeros((0, 2), dtype=torch.long)


def sequence_logp(token_logp: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` summed log-prob of each response: ``Σ_t mask * token_logp`` (``(B, T)`` each)."""
    return torch.where(mask, token_logp, torch.zeros_like(token_logp)).sum(1)


def dpo_loss(
    policy_seq: Tensor, ref_seq: Tensor, pairs: Tensor, beta: float
) -> tuple[Tensor, dict[str, float]]:
    """Mean DPO loss over ``pairs`` ``(P, 2)`` from summed log-probs ``(B,)`` of the policy and
    the reference; differentiable in ``policy_seq``. Metrics: the pairs' mean implicit reward
    margin ``β (Δ+ - Δ-)`` and the fraction where it is positive."""
    delta = policy_seq - ref_seq
    pairs = pairs.to(delta.device)
    margin = beta * (delta[pairs[:, 0]] - delta[pairs[:, 1]])
    loss = -F.logsigmoid(margin).mean()
    metrics = {
        "dpo_margin": float(margin.detach().mean()) if len(pairs) else 0.0,
        "dpo_accuracy": float((margin.detach() > 0).float().mean()) if len(pairs) else 0.0,
    }
    return loss, metrics


def dpo_coefficient(policy_seq: Tensor, ref_seq: Tensor, pairs: Tensor, beta: float) -> Tensor:
    """``(B,)`` fp32 gradient coefficient of the mean DPO loss over ``pairs``: the ascent
    direction ``-∂L/∂ log πθ(o_b)`` for every row ``b`` (0 for rows in no pair; a row in
    several pairs sums its terms). Multiplying every token's ``∇ log πθ`` of row ``b`` by it
    and summing gives ``-∇L``."""
    delta = (policy_seq - ref_seq).detach().double()
    pairs = pairs.to(delta.device)
    chosen, rejected = pairs[:, 0], pairs[:, 1]
    weight = beta * torch.sigmoid(beta * (delta[rejected] - delta[chosen])) / max(len(pairs), 1)
    coef = torch.zeros_like(delta)
    coef.index_add_(0, chosen, weight)
    coef.index_add_(0, rejected, -weight)
    return coef.float()
