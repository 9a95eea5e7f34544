"""The GRPO loss: clipped ratio objective plus the k3 KL penalty, with the metrics GRPO logs.

Per token ``l = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) + beta*k3`` with
``r = exp(logp - old_logp)`` and ``k3 = exp(ref - logp) - (ref - logp) - 1``; the loss is
``sum_{b,t} w_{b,t} * l_{b,t}`` with weights chosen by ``loss_agg`` (``grpo_token_weights``).

The shared pure-PyTorch helpers live in ``grpo_common`` and are re-exported here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._dispatch import resolve_impl
from ._interpret import launchable
from .advantages import group_advantage_of_rows
from .grpo_common import (
    ADV_EPS,
    LOSS_AGGS,
    METRIC_COLUMNS,
    METRIC_NAMES,
    N_METRIC_COLUMNS,
    check_advantage_args,
    check_group_size,
    check_grpo_inputs,
    group_normalise,
    grpo_metric_partials,
    grpo_metrics,
    grpo_metrics_from_partials,
    grpo_row_scales,
    grpo_token_advantages,
    grpo_token_inputs,
    grpo_token_loss_and_grad,
    grpo_token_weights,
)
from .kl import k3_and_expm1

__all__ = [
    "ADV_EPS",
    "LOSS_AGGS",
    "METRIC_COLUMNS",
    "METRIC_NAMES",
    "N_METRIC_COLUMNS",
    "check_advantage_args",
    "check_group_size",
    "check_grpo_inputs",
    "group_normalise",
    "grpo_loss",
    "grpo_loss_ref",
    "grpo_metric_partials",
    "grpo_metrics",
    "grpo_metrics_from_partials",
    "grpo_row_scales",
    "grpo_token_advantages",
    "grpo_token_inputs",
    "grpo_token_loss_and_grad",
    "grpo_token_weights",
]


def grpo_loss_ref(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    group_size: int | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.04,
    loss_agg: str = "seq-mean-token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain-PyTorch GRPO loss, term by term with autograd (same arguments as ``grpo_loss``).

    Runs in the inputs' promoted dtype (fp64 inputs give the test reference; bf16 inputs give
    the naive low-precision baseline). Gradient flows only into ``logp``.
    """
    check_grpo_inputs(
        logp,
        old_logp,
        ref_logp,
        mask,
        advantages=advantages,
        rewards=rewards,
        group_size=group_size,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        loss_agg=loss_agg,
        max_len=max_len,
    )
    return _grpo_loss_torch(
        logp,
        old_logp,
        ref_logp,
        mask,
        advantages=advantages,
        rewards=rewards,
        group_size=group_size,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        beta=beta,
        loss_agg=loss_agg,
        max_len=max_len,
    )


def _grpo_loss_torch(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    advantages: Tensor | None,
    rewards: Tensor | None,
    group_size: int | None,
    clip_eps_low: float,
    clip_eps_high: float,
    beta: float,
    loss_agg: str,
    max_len: int | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``grpo_loss_ref`` for arguments ``check_grpo_inputs`` already validated."""
    old_logp, ref_logp = old_logp.detach(), ref_logp.detach()
    ratio = torch.exp(logp - old_logp)
    source = advantages if advantages is not None else rewards
    wide = torch.float64 in (ratio.dtype, ref_logp.dtype, source.dtype)
    valid, adv, weights = grpo_token_inputs(
        mask,
        advantages=advantages,
        rewards=rewards,
        group_size=group_size,
        loss_agg=loss_agg,
        max_len=max_len,
        dtype=torch.float64 if wide else torch.float32,
    )
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    d = ref_logp - logp
    k3 = torch.exp(d) - d - 1
    terms = -torch.minimum(unclipped, clipped) + beta * k3
    loss = torch.where(valid, weights * terms, torch.zeros_like(terms)).sum()
    metrics = grpo_metrics(
        valid,
        ratio.detach(),
        adv,
        k3.detach(),
        terms.detach(),
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
    )
    return loss, metrics


# --------------------------------------------------------------------------------------------
# Triton kernels. The forward reduces each row to (sum of valid loss terms, valid count, metric
# partials); the aggregation over rows is O(B) PyTorch, so one kernel serves every loss_agg and
# the backward needs only a per-row scale. The backward recomputes the terms from the inputs
# instead of saving a (B, T) gradient, so the op keeps no activations beyond its inputs.
# --------------------------------------------------------------------------------------------

ADV_PER_SEQ, ADV_PER_TOKEN, ADV_REWARDS = 0, 1, 2
_BLOCK_T_FWD = 1024
_BLOCK_T_BWD = 1024
# Elements per program tile: the forward keeps 11 fp32 accumulators per element in registers,
# so it uses a smaller tile and more warps than the elementwise backward.
_TILE_FWD, _WARPS_FWD = 1024, 8
_TILE_BWD, _WARPS_BWD = 2048, 8


@triton.jit
def grpo_token_terms(logp, old, ref, adv, clip_low, clip_high, beta):
    """fp32 ``(loss term, d term / d logp, ratio, k3)``; same gradient rule as the reference:
    zero PPO gradient where the clipped term is strictly smaller, unclipped gradient at ties."""
    ratio = tl.exp(logp - old)
    unclipped = ratio * adv
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high) * adv
    # NaN in the unclipped product must win, as it does in torch.minimum.
    take_unclipped = (unclipped <= clipped) | (unclipped != unclipped)
    k3, em1 = k3_and_expm1(ref - logp)
    term = -tl.where(take_unclipped, unclipped, clipped) + beta * k3
    dterm = tl.where(take_unclipped, -unclipped, 0.0) - beta * em1
    return term, dterm, ratio, k3


@triton.jit
def _row_advantages(
    adv_ptr, rows, row_ok, group_size, adv_eps, ADV_MODE: tl.constexpr, BLOCK_G: tl.constexpr
):
    """fp32 ``(BLOCK_B,)`` per-row advantages (modes 0 and 2; mode 1 loads per token)."""
    if ADV_MODE == 2:
        a = group_advantage_of_rows(adv_ptr, rows, row_ok, group_size, adv_eps, BLOCK_G)
    elif ADV_MODE == 0:
        a = tl.load(adv_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        a = rows.to(tl.float32) * 0.0
    return a


@triton.jit
def _load_tile(
    logp_ptr, old_ptr, ref_ptr, mask_ptr, adv_ptr, a_row, rows, row_ok, t,
    seq_len, s_logp, s_old, s_ref, s_mask, s_adv, ADV_MODE: tl.constexpr,
):  # fmt: skip
    """Load one (BLOCK_B, BLOCK_T) tile as fp32; masked tokens read as zeros."""
    r64 = rows.to(tl.int64)[:, None]
    inb = row_ok[:, None] & (t < seq_len)[None, :]
    tt = t[None, :]
    valid = inb & (tl.load(mask_ptr + r64 * s_mask + tt, mask=inb, other=0) != 0)
    logp = tl.load(logp_ptr + r64 * s_logp + tt, mask=valid, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + r64 * s_old + tt, mask=valid, other=0.0).to(tl.float32)
    ref = tl.load(ref_ptr + r64 * s_ref + tt, mask=valid, other=0.0).to(tl.float32)
    if ADV_MODE == 1:
        a = tl.load(adv_ptr + r64 * s_adv + tt, mask=valid, other=0.0).to(tl.float32)
    else:
        a = tl.zeros_like(logp) + a_row[:, None]
    return inb, valid, logp, old, ref, a


@triton.jit
def _grpo_loss_fwd_kernel(
    logp_ptr, old_ptr, ref_ptr, mask_ptr, adv_ptr,
    row_loss_ptr, row_count_ptr, partials_ptr,
    batch, seq_len, s_logp, s_old, s_ref, s_mask, s_adv,
    group_size, adv_eps, clip_low, clip_high, beta,
    ADV_MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
):  # fmt: skip
    # A program owns BLOCK_B whole rows and walks along T, so per-row sums need no atomics.
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < batch
    a_row = _row_advantages(adv_ptr, rows, row_ok, group_size, adv_eps, ADV_MODE, BLOCK_G)
    # Per-lane accumulators, reduced along T once after the loop.
    zero = tl.zeros([BLOCK_B, BLOCK_T], dtype=tl.float32)
    loss, count, kl, clip_lo_n, clip_hi_n, r_sum, a_mean, a_m2, bad = (
        zero, zero, zero, zero, zero, zero, zero, zero, zero,
    )  # fmt: skip
    r_min = zero + float("inf")
    r_max = zero - float("inf")
    for t0 in range(0, seq_len, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        _, valid, logp, old, ref, a = _load_tile(
            logp_ptr, old_ptr, ref_ptr, mask_ptr, adv_ptr, a_row, rows, row_ok, t,
            seq_len, s_logp, s_old, s_ref, s_mask, s_adv, ADV_MODE,
        )  # fmt: skip
        term, _, ratio, k3 = grpo_token_terms(logp, old, ref, a, clip_low, clip_high, beta)
        loss += tl.where(valid, term, 0.0)
        kl += tl.where(valid, k3, 0.0)
        clip_lo_n += (valid & (ratio < 1.0 - clip_low) & (a < 0.0)).to(tl.float32)
        clip_hi_n += (valid & (ratio > 1.0 + clip_high) & (a > 0.0)).to(tl.float32)
        r_sum += tl.where(valid, ratio, 0.0)
        r_min = tl.minimum(r_min, tl.where(valid, ratio, float("inf")))
        r_max = tl.maximum(r_max, tl.where(valid, ratio, float("-inf")))
        finite = (term == term) & (tl.abs(term) != float("inf"))
        bad += (valid & (finite == 0)).to(tl.float32)
        # Welford per lane, so the advantage std has no E[a^2] - E[a]^2 cancellation.
        count += valid.to(tl.float32)
        delta = tl.where(valid, a - a_mean, 0.0)
        a_mean += delta / tl.maximum(count, 1.0)
        a_m2 += delta * tl.where(valid, a - a_mean, 0.0)
    n = tl.sum(count, axis=1)
    mean = tl.sum(count * a_mean, axis=1) / tl.maximum(n, 1.0)
    spread = a_mean - mean[:, None]
    m2 = tl.sum(a_m2, axis=1) + tl.sum(count * spread * spread, axis=1)
    tl.store(row_loss_ptr + rows, tl.sum(loss, axis=1), mask=row_ok)
    tl.store(row_count_ptr + rows, n, mask=row_ok)
    p = partials_ptr + rows.to(tl.int64) * 10
    tl.store(p + 0, n, mask=row_ok)
    tl.store(p + 1, tl.sum(kl, axis=1), mask=row_ok)
    tl.store(p + 2, tl.sum(clip_lo_n, axis=1), mask=row_ok)
    tl.store(p + 3, tl.sum(clip_hi_n, axis=1), mask=row_ok)
    tl.store(p + 4, tl.sum(r_sum, axis=1), mask=row_ok)
    tl.store(p + 5, tl.min(r_min, axis=1), mask=row_ok)
    tl.store(p + 6, tl.max(r_max, axis=1), mask=row_ok)
    tl.store(p + 7, mean, mask=row_ok)
    tl.store(p + 8, m2, mask=row_ok)
    tl.store(p + 9, tl.sum(bad, axis=1), mask=row_ok)


@triton.jit
def _grpo_loss_bwd_kernel(
    grad_row_ptr, logp_ptr, old_ptr, ref_ptr, mask_ptr, adv_ptr, dlogp_ptr,
    batch, seq_len, s_logp, s_old, s_ref, s_mask, s_adv,
    group_size, adv_eps, clip_low, clip_high, beta,
    ADV_MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < batch
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    a_row = _row_advantages(adv_ptr, rows, row_ok, group_size, adv_eps, ADV_MODE, BLOCK_G)
    inb, valid, logp, old, ref, a = _load_tile(
        logp_ptr, old_ptr, ref_ptr, mask_ptr, adv_ptr, a_row, rows, row_ok, t,
        seq_len, s_logp, s_old, s_ref, s_mask, s_adv, ADV_MODE,
    )  # fmt: skip
    _, dterm, _, _ = grpo_token_terms(logp, old, ref, a, clip_low, clip_high, beta)
    g = tl.load(grad_row_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    dlogp = tl.where(valid, g[:, None] * dterm, 0.0)
    out = dlogp_ptr + rows.to(tl.int64)[:, None] * seq_len + t[None, :]
    tl.store(out, dlogp.to(dlogp_ptr.dtype.element_ty), mask=inb)


def _rows(t: Tensor) -> Tensor:
    """A (B, T) tensor with unit stride along T (any row stride); bool viewed as uint8."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _launch_args(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, block_t_max, tile):
    """Kernel tensors, strides and block sizes: tiles of about ``tile`` elements."""
    batch, seq = logp.shape
    tensors = [_rows(x) for x in (logp, old_logp, ref_logp, mask)]
    adv = _rows(adv) if adv_mode == ADV_PER_TOKEN else adv.contiguous()
    strides = [x.stride(0) for x in tensors] + [adv.stride(0)]
    block_t = min(block_t_max, triton.next_power_of_2(seq))
    block_b = max(1, min(triton.next_power_of_2(batch), tile // block_t))
    block_g = triton.next_power_of_2(group_size) if adv_mode == ADV_REWARDS else 1
    return tensors, adv, strides, dict(BLOCK_B=block_b, BLOCK_T=block_t, BLOCK_G=block_g)


def _grpo_loss_fwd_launch(
    logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps, clip_low, clip_high, beta
):
    batch, seq = logp.shape
    dev = logp.device
    row_loss = torch.zeros(batch, dtype=torch.float32, device=dev)
    row_count = torch.zeros(batch, dtype=torch.float32, device=dev)
    partials = torch.zeros((batch, N_METRIC_COLUMNS), dtype=torch.float32, device=dev)
    if batch == 0 or seq == 0:
        return row_loss, row_count, partials
    (lp, old, ref, m), a, strides, blocks = _launch_args(
        logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, _BLOCK_T_FWD, _TILE_FWD
    )
    launchable(_grpo_loss_fwd_kernel, logp)[(triton.cdiv(batch, blocks["BLOCK_B"]),)](
        lp, old, ref, m, a, row_loss, row_count, partials,
        batch, seq, *strides, group_size, adv_eps, clip_low, clip_high, beta,
        ADV_MODE=adv_mode, num_warps=_WARPS_FWD, **blocks,
    )  # fmt: skip
    return row_loss, row_count, partials


def _grpo_loss_bwd_launch(
    grad_row, logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps,
    clip_low, clip_high, beta,
):  # fmt: skip
    batch, seq = logp.shape
    dlogp = torch.empty((batch, seq), dtype=logp.dtype, device=logp.device)
    if dlogp.numel() == 0:
        return dlogp
    (lp, old, ref, m), a, strides, blocks = _launch_args(
        logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, _BLOCK_T_BWD, _TILE_BWD
    )
    grid = (triton.cdiv(batch, blocks["BLOCK_B"]), triton.cdiv(seq, blocks["BLOCK_T"]))
    launchable(_grpo_loss_bwd_kernel, logp)[grid](
        grad_row.contiguous(), lp, old, ref, m, a, dlogp,
        batch, seq, *strides, group_size, adv_eps, clip_low, clip_high, beta,
        ADV_MODE=adv_mode, num_warps=_WARPS_BWD, **blocks,
    )  # fmt: skip
    return dlogp


@torch.library.custom_op("dsm_engine::grpo_loss_rows", mutates_args=())
def grpo_loss_rows_op(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    adv: Tensor,
    adv_mode: int,
    group_size: int,
    adv_eps: float,
    clip_eps_low: float,
    clip_eps_high: float,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton GRPO forward: per-row ``(sum_t valid*l (B,), valid count (B,), partials (B, 10))``.

    ``adv`` is ``(B,)`` advantages (``adv_mode=0``), ``(B, T)`` advantages (1) or ``(B,)``
    rewards normalised in-kernel over groups of ``group_size`` (2). All outputs fp32.
    """
    return _grpo_loss_fwd_launch(
        logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps,
        clip_eps_low, clip_eps_high, beta,
    )  # fmt: skip


@grpo_loss_rows_op.register_fake
def _(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps, lo, hi, beta):
    batch = logp.shape[0]
    return (
        logp.new_empty((batch,), dtype=torch.float32),
        logp.new_empty((batch,), dtype=torch.float32),
        logp.new_empty((batch, N_METRIC_COLUMNS), dtype=torch.float32),
    )


@torch.library.custom_op("dsm_engine::grpo_loss_rows_bwd", mutates_args=())
def grpo_loss_rows_bwd_op(
    grad_row: Tensor,
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    adv: Tensor,
    adv_mode: int,
    group_size: int,
    adv_eps: float,
    clip_eps_low: float,
    clip_eps_high: float,
    beta: float,
) -> Tensor:
    """Triton GRPO backward: ``dlogp[b, t] = grad_row[b] * valid * dl/dlogp`` in logp's dtype."""
    return _grpo_loss_bwd_launch(
        grad_row, logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps,
        clip_eps_low, clip_eps_high, beta,
    )  # fmt: skip


@grpo_loss_rows_bwd_op.register_fake
def _(grad_row, logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps, lo, hi, beta):
    return torch.empty(logp.shape, dtype=logp.dtype, device=logp.device)


class GRPOLossRowsFunction(torch.autograd.Function):
    """Autograd of ``dsm_engine::grpo_loss_rows`` (also registered on the op).

    Only ``logp`` gets a gradient; old/ref log-probs, mask and advantages are constants.
    """

    @staticmethod
    def forward(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps, lo, hi, beta):
        return grpo_loss_rows_op(
            logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps, lo, hi, beta
        )

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, adv_eps, lo, hi, beta = inputs
        ctx.save_for_backward(logp, old_logp, ref_logp, mask, adv)
        ctx.adv_mode = adv_mode
        ctx.group_size = group_size
        ctx.adv_eps = adv_eps
        ctx.clip_eps_low = lo
        ctx.clip_eps_high = hi
        ctx.beta = beta
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    def backward(ctx, grad_row_loss, _grad_count, _grad_partials):
        dlogp = None
        if ctx.needs_input_grad[0]:
            logp, old_logp, ref_logp, mask, adv = ctx.saved_tensors
            dlogp = grpo_loss_rows_bwd_op(
                grad_row_loss,
                logp,
                old_logp,
                ref_logp,
                mask,
                adv,
                ctx.adv_mode,
                ctx.group_size,
                ctx.adv_eps,
                ctx.clip_eps_low,
                ctx.clip_eps_high,
                ctx.beta,
            )
        return (dlogp,) + (None,) * 10


torch.library.register_autograd(
    "dsm_engine::grpo_loss_rows",
    GRPOLossRowsFunction.backward,
    setup_context=GRPOLossRowsFunction.setup_context,
)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    group_size: int | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.04,
    loss_agg: str = "seq-mean-token-mean",
    max_len: int | None = None,
    impl: str = "auto",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO policy loss with the k3 KL penalty, and its metrics, in one pass over the tokens.

    logp: ``(B, T)`` fp32/bf16/fp16 log-probs of the sampled tokens under the policy (the only
    input that receives a gradient, in its own dtype). old_logp, ref_logp: ``(B, T)`` floating,
    the sampling policy's and the reference model's log-probs. mask: ``(B, T)`` bool or 0/1.
    Exactly one of ``advantages`` (``(B,)`` per sequence or ``(B, T)`` per token) and
    ``rewards`` (``(B,)``, normalised over groups of ``group_size`` consecutive rows:
    ``(r - mean) / (std + 1e-6)``, population std, 0 for an all-equal group).
    Per token ``l = -min(r*A, clip(r, 1-clip_eps_low, 1+clip_eps_high)*A) + beta*k3``.
    loss_agg (``loss = sum w*l``): ``seq-mean-token-mean`` 1/B sum_b 1/|o_b| sum_t (paper; empty
    rows add 0 and count in B), ``token-mean`` sum l / #valid, ``seq-mean-token-sum``
    1/B sum_b sum_t, ``seq-mean-token-sum-norm`` 1/(B*L) sum_b sum_t with L = ``max_len`` or T.
    Returns ``(loss, metrics)``: loss a 0-d fp32 tensor; metrics 0-d fp32 tensors ``kl_mean``,
    ``clip_frac_low``, ``clip_frac_high``, ``ratio_mean``/``min``/``max``, ``adv_mean``,
    ``adv_std`` over valid tokens, and ``nonfinite`` (count of valid non-finite loss terms).
    impl: ``"auto"`` (Triton on CUDA, PyTorch on CPU), ``"triton"`` or ``"torch"``.
    """
    check_grpo_inputs(
        logp,
        old_logp,
        ref_logp,
        mask,
        advantages=advantages,
        rewards=rewards,
        group_size=group_size,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        loss_agg=loss_agg,
        max_len=max_len,
    )
    if resolve_impl(impl, logp) == "torch":
        dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
        loss, metrics = _grpo_loss_torch(
            logp.to(dtype),
            old_logp.to(dtype),
            ref_logp.to(dtype),
            mask,
            advantages=advantages,
            rewards=rewards,
            group_size=group_size,
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
            beta=beta,
            loss_agg=loss_agg,
            max_len=max_len,
        )
        return loss.to(torch.float32), metrics
    if advantages is not None:
        adv_mode = ADV_PER_SEQ if advantages.dim() == 1 else ADV_PER_TOKEN
        adv, gsize = advantages.detach(), 1
    else:
        assert rewards is not None and group_size is not None
        adv_mode, adv, gsize = ADV_REWARDS, rewards.detach(), group_size
    row_loss, row_count, partials = GRPOLossRowsFunction.apply(
        logp,
        old_logp.detach(),
        ref_logp.detach(),
        mask.detach(),
        adv,
        adv_mode,
        gsize,
        ADV_EPS,
        float(clip_eps_low),
        float(clip_eps_high),
        float(beta),
    )
    scales = grpo_row_scales(row_count, loss_agg, logp.shape[1], max_len=max_len)
    return (scales * row_loss).sum(), grpo_metrics_from_partials(partials)
