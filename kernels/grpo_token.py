"""The per-token GRPO loss: one formula for the reference, the PyTorch path and the fused head.

``l = -min(r*A, clip(r, 1 - eps_low, 1 + eps_high)*A) + beta*k3`` with
``r = exp(logp - old_logp)`` and ``k3 = exp(ref - logp) - (ref - logp) - 1`` (computed by
``kl.k3_and_expm1_torch``, accurate near ``ref = logp``). The Triton kernel mirrors it line by
line (``grpo_loss_triton.grpo_token_terms``) and its tests compare it with this formula in fp64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .kl import k3_and_expm1_torch
from .options import GRPOLossOptions


class TokenTerms(NamedTuple):
    """Per-token results of ``grpo_token_terms``, all of the inputs' shape."""

    loss: Tensor  # l
    ratio: Tensor  # r
    k3: Tensor
    grad: Tensor | None  # dl/dlogp (only with ``with_grad``), outside autograd


def grpo_token_terms(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    adv: Tensor,
    options: GRPOLossOptions,
    *,
    with_grad: bool = False,
) -> TokenTerms:
    """Elementwise GRPO terms in the inputs' promoted dtype, differentiable in ``logp``.

    Gradient rule (``grad``, and what autograd gives through ``loss``): where the clipped term
    is strictly smaller (``r`` outside the clip range on the side the sign of ``A`` makes
    binding) the PPO part has zero gradient; at a tie of the ``min`` (every ``r`` inside the
    range) the unclipped branch's ``-A*r``. A NaN unclipped product wins, as in ``torch.min``.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - options.clip_eps_low, 1.0 + options.clip_eps_high) * adv
    take_unclipped = (unclipped <= clipped) | unclipped.isnan()
    k3, em1 = k3_and_expm1_torch(ref_logp - logp)
    loss = -torch.where(take_unclipped, unclipped, clipped) + options.beta * k3
    grad = None
    if with_grad:
        with torch.no_grad():
            grad = torch.where(take_unclipped, -unclipped, 0.0) - options.beta * em1
    return TokenTerms(loss, ratio, k3, grad)
