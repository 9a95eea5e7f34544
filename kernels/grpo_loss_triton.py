"""The GRPO loss in Triton: per-row forward and backward kernels, their ``torch.library`` ops.

The forward reduces each row to (sum of valid loss terms, valid count, metric partials); the
aggregation over rows is O(B) PyTorch (``grpo_loss``), so one kernel serves every ``loss_agg``
and the backward needs only a per-row scale. The backward recomputes the terms from the inputs
instead of saving a ``(B, T)`` gradient, so the op keeps no activations beyond its inputs. The
per-token math is ``grpo_token.grpo_token_terms`` written in Triton (``_token_terms``).

Ops (namespace ``dsm_engine``, each with a fake implementation, autograd registered on the
forward): ``grpo_loss_rows(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs)``
and ``grpo_loss_rows_bwd(grad_row, ...same)``. ``grpo_loss_rows`` (the function) is where a
``GRPOLossOptions`` and the advantage source become those flat arguments.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._interpret import launchable
from .advantages import group_advantage_of_rows
from .grpo_inputs import GRPOInputs
from .grpo_metrics import N_METRIC_COLUMNS
from .kl import k3_and_expm1
from .options import GRPOLossOptions

# How the ``adv`` tensor of the ops is read: (B,) advantages per sequence, (B, T) per token,
# or (B,) rewards normalised in-kernel over groups of ``group_size`` rows.
ADV_PER_SEQ, ADV_PER_TOKEN, ADV_REWARDS = 0, 1, 2
_BLOCK_T_FWD = 1024
_BLOCK_T_BWD = 1024
# Elements per program tile: the forward keeps 11 fp32 accumulators per element in registers,
# so it uses a smaller tile and more warps than the elementwise backward.
_TILE_FWD, _WARPS_FWD = 1024, 8
_TILE_BWD, _WARPS_BWD = 2048, 8
_N_COLUMNS = tl.constexpr(N_METRIC_COLUMNS)


@triton.jit
def _token_terms(logp, old, ref, adv, clip_low, clip_high, beta):
    """fp32 ``(loss term, d term / d logp, ratio, k3)``: ``grpo_token.grpo_token_terms`` line by
    line (the same gradient rule: zero PPO gradient where the clipped term is strictly smaller,
    the unclipped gradient at ties)."""
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
    logp_ptr,
    old_ptr,
    ref_ptr,
    mask_ptr,
    adv_ptr,
    a_row,
    rows,
    row_ok,
    t,
    seq_len,
    s_logp,
    s_old,
    s_ref,
    s_mask,
    s_adv,
    ADV_MODE: tl.constexpr,
):
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
    logp_ptr,
    old_ptr,
    ref_ptr,
    mask_ptr,
    adv_ptr,
    row_loss_ptr,
    row_count_ptr,
    partials_ptr,
    batch,
    seq_len,
    s_logp,
    s_old,
    s_ref,
    s_mask,
    s_adv,
    group_size,
    adv_eps,
    clip_low,
    clip_high,
    beta,
    ADV_MODE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    # A program owns BLOCK_B whole rows and walks along T, so per-row sums need no atomics.
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < batch
    a_row = _row_advantages(adv_ptr, rows, row_ok, group_size, adv_eps, ADV_MODE, BLOCK_G)
    # Per-lane accumulators, reduced along T once after the loop.
    zero = tl.zeros([BLOCK_B, BLOCK_T], dtype=tl.float32)
    loss, count, kl, r_sum, bad = zero, zero, zero, zero, zero
    clip_lo_n, clip_hi_n, a_mean, a_m2 = zero, zero, zero, zero
    r_min = zero + float("inf")
    r_max = zero - float("inf")
    for t0 in range(0, seq_len, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        _, valid, logp, old, ref, a = _load_tile(
            logp_ptr,
            old_ptr,
            ref_ptr,
            mask_ptr,
            adv_ptr,
            a_row,
            rows,
            row_ok,
            t,
            seq_len,
            s_logp,
            s_old,
            s_ref,
            s_mask,
            s_adv,
            ADV_MODE,
        )
        term, _, ratio, k3 = _token_terms(logp, old, ref, a, clip_low, clip_high, beta)
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
    p = partials_ptr + rows.to(tl.int64) * _N_COLUMNS
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
    grad_row_ptr,
    logp_ptr,
    old_ptr,
    ref_ptr,
    mask_ptr,
    adv_ptr,
    dlogp_ptr,
    batch,
    seq_len,
    s_logp,
    s_old,
    s_ref,
    s_mask,
    s_adv,
    group_size,
    adv_eps,
    clip_low,
    clip_high,
    beta,
    ADV_MODE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < batch
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    a_row = _row_advantages(adv_ptr, rows, row_ok, group_size, adv_eps, ADV_MODE, BLOCK_G)
    inb, valid, logp, old, ref, a = _load_tile(
        logp_ptr,
        old_ptr,
        ref_ptr,
        mask_ptr,
        adv_ptr,
        a_row,
        rows,
        row_ok,
        t,
        seq_len,
        s_logp,
        s_old,
        s_ref,
        s_mask,
        s_adv,
        ADV_MODE,
    )
    _, dterm, _, _ = _token_terms(logp, old, ref, a, clip_low, clip_high, beta)
    g = tl.load(grad_row_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    dlogp = tl.where(valid, g[:, None] * dterm, 0.0)
    out = dlogp_ptr + rows.to(tl.int64)[:, None] * seq_len + t[None, :]
    tl.store(out, dlogp.to(dlogp_ptr.dtype.element_ty), mask=inb)


def _rows(t: Tensor) -> Tensor:
    """A (B, T) tensor with unit stride along T (any row stride); bool viewed as uint8."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _kernel_args(
    tensors: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    adv_mode: int,
    group_size: int,
    coeffs: list[float],
    *,
    block_t_max: int,
    tile: int,
) -> dict:
    """The arguments both kernels share, by name: the inputs as (B, T) rows and their row
    strides, the scalar options, and block sizes for tiles of about ``tile`` elements.
    ``tensors``: ``(logp, old_logp, ref_logp, mask, adv)``."""
    *inputs, adv = tensors
    lp, old, ref, m = (_rows(x) for x in inputs)
    batch, seq = lp.shape
    adv = _rows(adv) if adv_mode == ADV_PER_TOKEN else adv.contiguous()
    adv_eps, clip_low, clip_high, beta = coeffs
    block_t = min(block_t_max, triton.next_power_of_2(seq))
    return dict(
        logp_ptr=lp,
        old_ptr=old,
        ref_ptr=ref,
        mask_ptr=m,
        adv_ptr=adv,
        batch=batch,
        seq_len=seq,
        s_logp=lp.stride(0),
        s_old=old.stride(0),
        s_ref=ref.stride(0),
        s_mask=m.stride(0),
        s_adv=adv.stride(0),
        group_size=group_size,
        adv_eps=adv_eps,
        clip_low=clip_low,
        clip_high=clip_high,
        beta=beta,
        ADV_MODE=adv_mode,
        BLOCK_B=max(1, min(triton.next_power_of_2(batch), tile // block_t)),
        BLOCK_T=block_t,
        BLOCK_G=triton.next_power_of_2(group_size) if adv_mode == ADV_REWARDS else 1,
    )


def _rows_fwd(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs):
    batch, seq = logp.shape
    row_loss = logp.new_zeros(batch, dtype=torch.float32)
    row_count = torch.zeros_like(row_loss)
    partials = logp.new_zeros((batch, N_METRIC_COLUMNS), dtype=torch.float32)
    if batch == 0 or seq == 0:
        return row_loss, row_count, partials
    tensors = (logp, old_logp, ref_logp, mask, adv)
    args = _kernel_args(
        tensors, adv_mode, group_size, coeffs, block_t_max=_BLOCK_T_FWD, tile=_TILE_FWD
    )
    grid = (triton.cdiv(batch, args["BLOCK_B"]),)
    launchable(_grpo_loss_fwd_kernel, logp)[grid](
        row_loss_ptr=row_loss,
        row_count_ptr=row_count,
        partials_ptr=partials,
        num_warps=_WARPS_FWD,
        **args,
    )
    return row_loss, row_count, partials


def _rows_bwd(grad_row, logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs):
    batch, seq = logp.shape
    dlogp = torch.empty((batch, seq), dtype=logp.dtype, device=logp.device)
    if dlogp.numel() == 0:
        return dlogp
    tensors = (logp, old_logp, ref_logp, mask, adv)
    args = _kernel_args(
        tensors, adv_mode, group_size, coeffs, block_t_max=_BLOCK_T_BWD, tile=_TILE_BWD
    )
    grid = (triton.cdiv(batch, args["BLOCK_B"]), triton.cdiv(seq, args["BLOCK_T"]))
    launchable(_grpo_loss_bwd_kernel, logp)[grid](
        grad_row_ptr=grad_row.contiguous(), dlogp_ptr=dlogp, num_warps=_WARPS_BWD, **args
    )
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
    coeffs: list[float],
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton GRPO forward: per-row ``(sum_t valid*l (B,), valid count (B,), partials (B, 10))``.

    ``adv`` is read as ``adv_mode`` says (``ADV_PER_SEQ``, ``ADV_PER_TOKEN``, ``ADV_REWARDS``
    normalised over groups of ``group_size``); ``coeffs`` are ``(adv_eps, clip_eps_low,
    clip_eps_high, beta)`` (``grpo_loss_rows`` builds them). All outputs fp32.
    """
    return _rows_fwd(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs)


@grpo_loss_rows_op.register_fake
def _(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs):
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
    coeffs: list[float],
) -> Tensor:
    """Triton GRPO backward: ``dlogp[b, t] = grad_row[b] * valid * dl/dlogp`` in logp's dtype."""
    return _rows_bwd(grad_row, logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs)


@grpo_loss_rows_bwd_op.register_fake
def _(grad_row, logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs):
    return torch.empty(logp.shape, dtype=logp.dtype, device=logp.device)


class GRPOLossRowsFunction(torch.autograd.Function):
    """Autograd of ``dsm_engine::grpo_loss_rows`` (also registered on the op).

    Only ``logp`` gets a gradient; old/ref log-probs, mask and advantages are constants.
    """

    @staticmethod
    def forward(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs):
        return grpo_loss_rows_op(logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        logp, old_logp, ref_logp, mask, adv, adv_mode, group_size, coeffs = inputs
        ctx.save_for_backward(logp, old_logp, ref_logp, mask, adv)
        ctx.adv_mode, ctx.group_size, ctx.coeffs = adv_mode, group_size, coeffs
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    def backward(ctx, grad_row_loss, _grad_count, _grad_partials):
        dlogp = None
        if ctx.needs_input_grad[0]:
            dlogp = grpo_loss_rows_bwd_op(
                grad_row_loss, *ctx.saved_tensors, ctx.adv_mode, ctx.group_size, ctx.coeffs
            )
        return dlogp, None, None, None, None, None, None, None


torch.library.register_autograd(
    "dsm_engine::grpo_loss_rows",
    GRPOLossRowsFunction.backward,
    setup_context=GRPOLossRowsFunction.setup_context,
)


def grpo_loss_rows(x: GRPOInputs, options: GRPOLossOptions) -> tuple[Tensor, Tensor, Tensor]:
    """The Triton op on validated ``grpo_loss`` inputs: ``(row_loss, row_count, partials)``.

    The one place where the options and the advantage source become the ops' flat arguments.
    """
    if x.advantages is not None:
        adv_mode = ADV_PER_SEQ if x.advantages.dim() == 1 else ADV_PER_TOKEN
        adv, group_size = x.advantages.detach(), 1
    else:
        assert x.rewards is not None and options.group_size is not None
        adv_mode, adv, group_size = ADV_REWARDS, x.rewards.detach(), options.group_size
    coeffs = [options.adv_eps, options.clip_eps_low, options.clip_eps_high, options.beta]
    tensors = (x.logp, x.old_logp.detach(), x.ref_logp.detach(), x.mask.detach(), adv)
    return GRPOLossRowsFunction.apply(*tensors, adv_mode, group_size, coeffs)
