"""The GRPO loss: clipped ratio objective plus the k3 KL penalty, with the metrics GRPO logs.

Per token ``l = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) + beta*k3`` with
``r = exp(logp - old_logp)`` and ``k3 = exp(ref - logp) - (ref - logp) - 1``
(``grpo_token.grpo_token_terms``); the loss is ``sum_{b,t} w_{b,t} * l_{b,t}`` with weights
chosen by ``loss_agg`` (``grpo_inputs.grpo_token_weights``).

``grpo_loss`` runs the Triton kernels (``grpo_loss_triton``) or the PyTorch path;
``grpo_loss_ref`` is the same PyTorch formula in the inputs' own dtype, with autograd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._dispatch import resolve_impl
from .grpo_inputs import (
    GRPOInputs,
    check_grpo_inputs,
    float_dtype,
    grpo_row_scales,
    grpo_token_inputs,
)
from .grpo_loss_triton import grpo_loss_rows
from .grpo_metrics import grpo_metrics, grpo_metrics_from_partials
from .grpo_token import grpo_token_terms
from .options import GRPOLossOptions, from_keywords


def grpo_loss_ref(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    options: GRPOLossOptions | None = None,
    **option_keywords: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain-PyTorch GRPO loss, term by term with autograd (same arguments as ``grpo_loss``).

    Runs in the inputs' promoted dtype (fp64 inputs give the test reference; bf16 inputs give
    the naive low-precision baseline). Gradient flows only into ``logp``.
    """
    x = GRPOInputs(logp, old_logp, ref_logp, mask, advantages, rewards)
    options = from_keywords(GRPOLossOptions, options, option_keywords, name="options")
    check_grpo_inputs(x, options)
    return _grpo_loss_torch(x, options)


def _grpo_loss_torch(x: GRPOInputs, options: GRPOLossOptions) -> tuple[Tensor, dict[str, Tensor]]:
    """``grpo_loss_ref`` for inputs ``check_grpo_inputs`` already validated."""
    assert x.logp is not None
    old_logp, ref_logp = x.old_logp.detach(), x.ref_logp.detach()
    source = x.advantages if x.advantages is not None else x.rewards
    assert source is not None
    dtype = float_dtype(x.logp.dtype, old_logp.dtype, ref_logp.dtype, source.dtype)
    valid, adv, weights = grpo_token_inputs(x, options, dtype)
    t = grpo_token_terms(x.logp, old_logp, ref_logp, adv, options)
    loss = torch.where(valid, weights * t.loss, torch.zeros_like(t.loss)).sum()
    metrics = grpo_metrics(
        valid,
        t.ratio.detach(),
        adv,
        t.k3.detach(),
        t.loss.detach(),
        clip_eps_low=options.clip_eps_low,
        clip_eps_high=options.clip_eps_high,
    )
    return loss, metrics


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    options: GRPOLossOptions | None = None,
    impl: str = "auto",
    **option_keywords: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO policy loss with the k3 KL penalty, and its metrics, in one pass over the tokens.

    logp: ``(B, T)`` fp32/bf16/fp16 log-probs of the sampled tokens under the policy (the only
    input that receives a gradient, in its own dtype). old_logp, ref_logp: ``(B, T)`` floating,
    the sampling policy's and the reference model's log-probs. mask: ``(B, T)`` bool or 0/1.
    Exactly one of ``advantages`` (``(B,)`` per sequence or ``(B, T)`` per token) and
    ``rewards`` (``(B,)``, normalised over groups of ``options.group_size`` consecutive rows:
    ``(r - mean) / (std + adv_eps)``, population std, 0 for an all-equal group).
    options: a ``GRPOLossOptions`` (clip range, beta, ``loss_agg``, ``max_len``, ``group_size``,
    ``adv_eps``), or its fields as keywords (``clip_eps_low=0.1, beta=0.0, ...``).
    Per token ``l = -min(r*A, clip(r, 1-clip_eps_low, 1+clip_eps_high)*A) + beta*k3``.
    loss_agg (``loss = sum w*l``): ``seq-mean-token-mean`` 1/B sum_b 1/|o_b| sum_t (paper; empty
    rows add 0 and count in B), ``token-mean`` sum l / #valid, ``seq-mean-token-sum``
    1/B sum_b sum_t, ``seq-mean-token-sum-norm`` 1/(B*L) sum_b sum_t with L = ``max_len`` or T.
    Returns ``(loss, metrics)``: loss a 0-d fp32 tensor; metrics 0-d fp32 tensors ``kl_mean``,
    ``clip_frac_low``, ``clip_frac_high``, ``ratio_mean``/``min``/``max``, ``adv_mean``,
    ``adv_std`` over valid tokens, and ``nonfinite`` (count of valid non-finite loss terms).
    impl: ``"auto"`` (Triton on CUDA, PyTorch on CPU), ``"triton"`` or ``"torch"``.
    """
    x = GRPOInputs(logp, old_logp, ref_logp, mask, advantages, rewards)
    options = from_keywords(GRPOLossOptions, options, option_keywords, name="options")
    check_grpo_inputs(x, options)
    return grpo_loss_checked(x, options, impl)


def grpo_loss_checked(
    x: GRPOInputs, options: GRPOLossOptions, impl: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """``grpo_loss`` for inputs ``check_grpo_inputs`` already validated."""
    logp = x.logp
    assert logp is not None
    if resolve_impl(impl, logp) == "torch":
        dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
        old_logp, ref_logp = x.old_logp.to(dtype), x.ref_logp.to(dtype)
        wide = x._replace(logp=logp.to(dtype), old_logp=old_logp, ref_logp=ref_logp)
        loss, metrics = _grpo_loss_torch(wide, options)
        return loss.to(torch.float32), metrics
    row_loss, row_count, partials = grpo_loss_rows(x, options)
    scales = grpo_row_scales(row_count, logp.shape[1], options)
    return (scales * row_loss).sum(), grpo_metrics_from_partials(partials)
