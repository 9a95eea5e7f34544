"""Group-relative advantages of GRPO (DeepSeekMath §4.1.2 outcome, §4.1.3 process supervision).

Outcome: the ``G`` rewards of one question's samples (rows ``i*G .. i*G+G-1``) are normalised
to ``(r - mean) / (std + eps)`` with the population std. Process: every valid step reward of
the group is normalised together, and token ``t`` of a sample gets the sum of the normalised
rewards of that sample's steps ending at or after ``t``. A group whose (valid) rewards are all
equal gets exactly 0: no signal, instead of rounding noise divided by ``eps``.

Advantages are constants of the policy loss, so these ops are forward-only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._dispatch import (
    check_group_size,
    check_positive_int,
    check_same_device,
    check_shape,
    resolve_impl,
)
from ._interpret import launchable
from .options import ADV_EPS

_BLOCK_T = 128
_BLOCK_S = 32
_BLOCK_GS = 1024


def group_advantages_ref(rewards: Tensor, group_size: int, *, eps: float = ADV_EPS) -> Tensor:
    """Plain-PyTorch ``(r - mean) / (std + eps)`` within consecutive groups of ``group_size``
    (population std): ``(B,)`` -> ``(B,)`` in fp32 (fp64 for fp64 input). A group whose
    rewards are all equal gets exactly 0 (its mean may differ from the rewards by rounding)."""
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(dtype).reshape(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = (r - mean).square().mean(dim=1, keepdim=True).sqrt()
    adv = (r - mean) / (std + eps)
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(-1)


def process_advantages_ref(
    step_rewards: Tensor,
    step_ends: Tensor,
    step_mask: Tensor,
    group_size: int,
    seq_len: int,
    *,
    eps: float = ADV_EPS,
) -> Tensor:
    """Plain-PyTorch process-supervision advantages ``(B, seq_len)`` (fp32; fp64 for fp64)."""
    dtype = torch.float64 if step_rewards.dtype == torch.float64 else torch.float32
    batch, steps = step_rewards.shape
    valid = step_mask.reshape(-1, group_size * steps)
    r = step_rewards.to(dtype).reshape(-1, group_size * steps)
    n = valid.sum(dim=1, keepdim=True).clamp(min=1)
    zero = torch.zeros_like(r)
    mean = torch.where(valid, r, zero).sum(dim=1, keepdim=True) / n
    var = torch.where(valid, (r - mean).square(), zero).sum(dim=1, keepdim=True) / n
    inf = torch.full_like(r, float("inf"))
    rmax = torch.where(valid, r, -inf).amax(dim=1, keepdim=True)
    rmin = torch.where(valid, r, inf).amin(dim=1, keepdim=True)
    live = valid & (rmax != rmin)
    norm = torch.where(live, (r - mean) / (var.sqrt() + eps), zero).reshape(batch, steps)
    tokens = torch.arange(seq_len, device=step_rewards.device)
    covers = step_ends[:, :, None] >= tokens[None, None, :]  # (B, S, T)
    return (covers * norm[:, :, None]).sum(dim=1)


@triton.jit
def group_advantage_of_rows(rewards_ptr, rows, row_ok, group_size, eps, BLOCK_G: tl.constexpr):
    """fp32 normalised advantages of ``rows`` (a vector) within their groups.

    Each row reloads its whole group (``BLOCK_G >= group_size``): O(G) extra reads per row,
    which lets the loss kernel normalise rewards without a separate launch.
    """
    start = (rows // group_size) * group_size
    g = tl.arange(0, BLOCK_G)
    inb = row_ok[:, None] & (g < group_size)[None, :]
    r = tl.load(rewards_ptr + start[:, None] + g[None, :], mask=inb, other=0.0).to(tl.float32)
    mean = tl.sum(r, axis=1) / group_size
    dev = tl.where(inb, r - mean[:, None], 0.0)
    std = tl.sqrt(tl.sum(dev * dev, axis=1) / group_size)
    rmax = tl.max(tl.where(inb, r, float("-inf")), axis=1)
    rmin = tl.min(tl.where(inb, r, float("inf")), axis=1)
    own = tl.load(rewards_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    return tl.where(rmax == rmin, 0.0, (own - mean) / (std + eps))


@triton.jit
def _group_advantages_fwd_kernel(rewards_ptr, out_ptr, group_size, eps, BLOCK_G: tl.constexpr):
    start = tl.program_id(0) * group_size
    offs = tl.arange(0, BLOCK_G)
    inb = offs < group_size
    r = tl.load(rewards_ptr + start + offs, mask=inb, other=0.0).to(tl.float32)
    mean = tl.sum(r, axis=0) / group_size
    dev = tl.where(inb, r - mean, 0.0)
    std = tl.sqrt(tl.sum(dev * dev, axis=0) / group_size)
    rmax = tl.max(tl.where(inb, r, float("-inf")), axis=0)
    rmin = tl.min(tl.where(inb, r, float("inf")), axis=0)
    adv = tl.where(rmax == rmin, 0.0, dev / (std + eps))
    tl.store(out_ptr + start + offs, adv, mask=inb)


@triton.jit
def _process_advantages_fwd_kernel(
    rew_ptr,
    ends_ptr,
    smask_ptr,
    out_ptr,
    steps,
    group_size,
    seq_len,
    eps,
    BLOCK_GS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    # One program per sample; inputs are contiguous (B, S), so a group is one flat span.
    b = tl.program_id(0)
    span = group_size * steps
    g0 = (b // group_size) * span
    total = tl.zeros([BLOCK_GS], dtype=tl.float32)
    count = tl.zeros([BLOCK_GS], dtype=tl.float32)
    hi = tl.full([BLOCK_GS], float("-inf"), dtype=tl.float32)
    lo = tl.full([BLOCK_GS], float("inf"), dtype=tl.float32)
    for s0 in range(0, span, BLOCK_GS):
        offs = s0 + tl.arange(0, BLOCK_GS)
        ok = (offs < span) & (tl.load(smask_ptr + g0 + offs, mask=offs < span, other=0) != 0)
        r = tl.load(rew_ptr + g0 + offs, mask=ok, other=0.0).to(tl.float32)
        total += tl.where(ok, r, 0.0)
        count += ok.to(tl.float32)
        hi = tl.maximum(hi, tl.where(ok, r, float("-inf")))
        lo = tl.minimum(lo, tl.where(ok, r, float("inf")))
    n = tl.maximum(tl.sum(count, axis=0), 1.0)
    mean = tl.sum(total, axis=0) / n
    live = tl.max(hi, axis=0) != tl.min(lo, axis=0)
    # Second pass for the variance: sum (r - mean)^2 avoids E[r^2] - E[r]^2 cancellation.
    sq = tl.zeros([BLOCK_GS], dtype=tl.float32)
    for s0 in range(0, span, BLOCK_GS):
        offs = s0 + tl.arange(0, BLOCK_GS)
        ok = (offs < span) & (tl.load(smask_ptr + g0 + offs, mask=offs < span, other=0) != 0)
        r = tl.load(rew_ptr + g0 + offs, mask=ok, other=0.0).to(tl.float32)
        dev = tl.where(ok, r - mean, 0.0)
        sq += dev * dev
    std = tl.sqrt(tl.sum(sq, axis=0) / n)
    row = b.to(tl.int64) * steps
    for t0 in range(0, seq_len, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for s0 in range(0, steps, BLOCK_S):
            j = s0 + tl.arange(0, BLOCK_S)
            ok = (j < steps) & (tl.load(smask_ptr + row + j, mask=j < steps, other=0) != 0)
            r = tl.load(rew_ptr + row + j, mask=ok, other=0.0).to(tl.float32)
            end = tl.load(ends_ptr + row + j, mask=ok, other=-1)
            norm = tl.where(ok, (r - mean) / (std + eps), 0.0)
            norm = tl.where(live, norm, 0.0)
            covers = end[None, :] >= t[:, None]
            acc += tl.sum(tl.where(covers, norm[None, :], 0.0), axis=1)
        tl.store(out_ptr + b.to(tl.int64) * seq_len + t, acc, mask=t < seq_len)


def _group_advantages_launch(rewards: Tensor, group_size: int, eps: float) -> Tensor:
    out = torch.empty(rewards.shape, dtype=torch.float32, device=rewards.device)
    if rewards.numel():
        block = triton.next_power_of_2(group_size)
        grid = (rewards.numel() // group_size,)
        launchable(_group_advantages_fwd_kernel, rewards)[grid](
            rewards.contiguous(), out, group_size, eps, BLOCK_G=block
        )
    return out


def _process_advantages_launch(
    step_rewards: Tensor,
    step_ends: Tensor,
    step_mask: Tensor,
    group_size: int,
    seq_len: int,
    eps: float,
) -> Tensor:
    batch, steps = step_rewards.shape
    out = torch.zeros((batch, seq_len), dtype=torch.float32, device=step_rewards.device)
    if batch and steps and seq_len:
        smask = step_mask.contiguous()
        smask = smask.view(torch.uint8) if smask.dtype == torch.bool else smask
        span = group_size * steps
        launchable(_process_advantages_fwd_kernel, step_rewards)[(batch,)](
            step_rewards.contiguous(),
            step_ends.contiguous(),
            smask,
            out,
            steps,
            group_size,
            seq_len,
            eps,
            BLOCK_GS=min(_BLOCK_GS, triton.next_power_of_2(span)),
            BLOCK_S=min(_BLOCK_S, triton.next_power_of_2(steps)),
            BLOCK_T=min(_BLOCK_T, triton.next_power_of_2(seq_len)),
        )
    return out


@torch.library.custom_op("dsm_engine::group_advantages", mutates_args=())
def group_advantages_op(rewards: Tensor, group_size: int, eps: float) -> Tensor:
    """Triton group normalisation, ``(B,)`` fp32."""
    return _group_advantages_launch(rewards, group_size, eps)


@group_advantages_op.register_fake
def _(rewards: Tensor, group_size: int, eps: float) -> Tensor:
    return torch.empty(rewards.shape, dtype=torch.float32, device=rewards.device)


@torch.library.custom_op("dsm_engine::process_advantages", mutates_args=())
def process_advantages_op(
    step_rewards: Tensor,
    step_ends: Tensor,
    step_mask: Tensor,
    group_size: int,
    seq_len: int,
    eps: float,
) -> Tensor:
    """Triton process-supervision advantages, ``(B, seq_len)`` fp32."""
    return _process_advantages_launch(step_rewards, step_ends, step_mask, group_size, seq_len, eps)


@process_advantages_op.register_fake
def _(step_rewards, step_ends, step_mask, group_size, seq_len, eps) -> Tensor:
    return step_rewards.new_empty((step_rewards.shape[0], seq_len), dtype=torch.float32)


def group_advantages(
    rewards: Tensor, group_size: int, *, eps: float = ADV_EPS, impl: str = "auto"
) -> Tensor:
    """GRPO outcome advantages: rewards normalised within consecutive groups.

    rewards: ``(B,)`` floating; ``group_size`` G divides B; rows ``i*G .. i*G+G-1`` form a group.
    Returns ``(B,)`` fp32 ``(r - mean_g) / (std_g + eps)`` (population std per group; 0 for a
    group of equal rewards). Not differentiable (advantages are constants).
    impl: ``"auto"`` (Triton on CUDA, PyTorch on CPU), ``"triton"`` or ``"torch"``.
    """
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(
            f"rewards must be a 1-D floating tensor (B,), got {tuple(rewards.shape)} {rewards.dtype}"
        )
    check_group_size(group_size, rewards.shape[0])
    if resolve_impl(impl, rewards) == "torch":
        return group_advantages_ref(rewards.detach(), group_size, eps=eps).to(torch.float32)
    return group_advantages_op(rewards.detach(), group_size, float(eps))


def process_advantages(
    step_rewards: Tensor,
    step_ends: Tensor,
    step_mask: Tensor,
    group_size: int,
    seq_len: int,
    *,
    eps: float = ADV_EPS,
    impl: str = "auto",
) -> Tensor:
    """GRPO process-supervision advantages (DeepSeekMath §4.1.3).

    step_rewards: ``(B, S)`` floating, S the most steps of any sample.
    step_ends: ``(B, S)`` integer, the response-token index (``0 .. seq_len-1``) ending each step.
    step_mask: ``(B, S)`` bool (or 0/1), which steps exist.
    All valid step rewards of a group of ``group_size`` consecutive samples share one mean and
    population std; ``r~ = (r - mean) / (std + eps)`` (0 when they are all equal).
    Returns ``(B, seq_len)`` fp32: token t gets ``sum_{valid j, step_ends[j] >= t} r~_j``;
    samples without steps get zeros. Not differentiable.
    """
    if step_rewards.dim() != 2 or not step_rewards.is_floating_point():
        raise ValueError(
            "step_rewards must be a 2-D floating tensor (B, S), "
            f"got {tuple(step_rewards.shape)} {step_rewards.dtype}"
        )
    shape = tuple(step_rewards.shape)
    check_same_device(step_rewards=step_rewards, step_ends=step_ends, step_mask=step_mask)
    check_shape("step_ends", step_ends, shape)
    check_shape("step_mask", step_mask, shape)
    if step_ends.is_floating_point() or step_ends.is_complex() or step_ends.dtype == torch.bool:
        raise ValueError(f"step_ends must be an integer tensor, got {step_ends.dtype}")
    check_group_size(group_size, shape[0])
    check_positive_int("seq_len", seq_len)
    valid = step_mask if step_mask.dtype == torch.bool else step_mask != 0
    outside = (step_ends < 0) | (step_ends >= seq_len)
    if bool((outside & valid).any()):
        raise ValueError(f"step_ends of valid steps must lie in [0, seq_len={seq_len})")
    step_rewards, step_ends = step_rewards.detach(), step_ends.to(torch.int64)
    if resolve_impl(impl, step_rewards) == "torch":
        return process_advantages_ref(
            step_rewards, step_ends, valid, group_size, seq_len, eps=eps
        ).to(torch.float32)
    return process_advantages_op(step_rewards, step_ends, valid, group_size, seq_len, float(eps))
