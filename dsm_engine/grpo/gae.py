"""Generalised advantage estimation (GAE, Schulman et al. 2016) over a batch's response tokens.

PPO (DeepSeekMath §4.1, eq. 2) scores each response token with
``A_t = Σ_{k>=t} (γλ)^{k-t} δ_k``, ``δ_k = r_k + γ V_{k+1} - V_k``, where the value after the
last response token is 0 (the episode ends there). The time steps of a row are its masked
tokens in order, so a prompt before them and masked tokens between them (tool outputs,
written by the environment, not the policy) are skipped rather than cutting the episode.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pack(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Positions ``(B, L)`` of each row's masked tokens in order (left-aligned) and which of
    them are real (``(B, L)`` bool); ``L`` is the largest count of masked tokens in a row."""
    lengths = mask.sum(1)
    width = int(lengths.max()) if mask.numel() else 0
    # a stable sort of "not masked" keeps the masked positions first, in their order
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < lengths[:, None]
    return order, valid


def gae_packed(
    rewards: Tensor, values: Tensor, valid: Tensor, *, gamma: float, lam: float
) -> Tensor:
    """GAE advantages ``(B, L)`` of left-aligned rows (``valid`` (B, L) bool, right-padded).

    rewards, values: ``(B, L)`` floating (entries where ``valid`` is False are ignored).
    Vectorised as one product with the ``(L, L)`` matrix of discounts ``(γλ)^(k-t)``, k >= t.
    Returns 0 where ``valid`` is False, in the inputs' dtype.
    """
    v = torch.where(valid, values, torch.zeros_like(values))
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)  # 0 after the last step
    delta = torch.where(valid, r + gamma * next_v - v, torch.zeros_like(v))
    width = delta.shape[1]
    steps = torch.arange(width, device=delta.device)
    ahead = steps[None, :] - steps[:, None]  # [t, k] = k - t
    base = torch.full((), gamma * lam, dtype=delta.dtype, device=delta.device)
    discount = torch.where(
        ahead >= 0, torch.pow(base, ahead.clamp(min=0).to(delta.dtype)), torch.zeros_like(base)
    )
    return delta @ discount.T  # (B, L): A[b, t] = Σ_k δ[b, k] (γλ)^(k-t)


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns (value targets ``A + V``) of the masked tokens.

    rewards, values: ``(B, T)`` floating, per token (the reward of the action taken at t and
    the critic's value of the state before it). mask: ``(B, T)`` bool, the time steps of each
    row in order (any layout: a prompt offset, right padding, holes). Returns two ``(B, T)``
    tensors in the inputs' dtype, 0 where ``mask`` is False. Not differentiable (constants).
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must be the same (B, T)"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
    rewards, values, mask = rewards.detach(), values.detach(), mask.bool()
    order, valid = _pack(mask)
    packed = gae_packed(
        rewards.gather(1, order), values.gather(1, order), valid, gamma=gamma, lam=lam
    )
    # padding slots point at unmasked positions (the sort puts them after the masked ones)
    # and carry 0 there
    adv = torch.zeros_like(rewards).scatter(1, order, torch.where(valid, packed, 0.0))
    returns = torch.where(mask, adv + values, torch.zeros_like(adv))
    return adv, returns
