"""What the GRPO loss makes of its tensor inputs: checks, per-token advantages, weights.

Every implementation (PyTorch, Triton, the fused head) validates its tensors with
``check_grpo_inputs`` once and derives the advantages and aggregation weights here, so they agree
on the aggregation rules. The options themselves are validated by ``GRPOLossOptions``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._dispatch import check_group_size, check_same_device, check_shape
from .advantages import group_advantages_ref
from .options import ADV_EPS, GRPOLossOptions


class GRPOInputs(NamedTuple):
    """The tensors of one GRPO loss call, as the public functions take them: ``(B, T)``
    log-probs and mask, and exactly one advantage source. ``logp`` is None on the fused path
    (the log-probs do not exist yet when the inputs are checked)."""

    logp: Tensor | None
    old_logp: Tensor
    ref_logp: Tensor
    mask: Tensor
    advantages: Tensor | None
    rewards: Tensor | None


def float_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """fp32 math for fp32/bf16/fp16 inputs; fp64 when any input is fp64 (references)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _valid(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


# --------------------------------------------------------------------------------------------
# Aggregation weights
# --------------------------------------------------------------------------------------------


def grpo_row_scales(row_count: Tensor, seq_len: int, options: GRPOLossOptions) -> Tensor:
    """Per-row factor c_b so that ``loss = sum_b c_b * sum_t mask_{b,t} * l_{b,t}``.

    row_count: ``(B,)`` number of valid tokens per row (any float dtype; result has its dtype).
    seq_len: the padded length T (used by ``seq-mean-token-sum-norm`` unless ``max_len``).
    """
    n_rows = row_count.shape[0]
    ones = torch.ones_like(row_count)
    if options.loss_agg == "seq-mean-token-mean":
        # A row with no valid token contributes 0 but still counts in B.
        return ones / (row_count.clamp(min=1) * n_rows)
    if options.loss_agg == "token-mean":
        return ones / row_count.sum().clamp(min=1)
    if options.loss_agg == "seq-mean-token-sum":
        return ones / n_rows
    return ones / (n_rows * (options.max_len if options.max_len is not None else seq_len))


def grpo_token_weights(
    mask: Tensor,
    loss_agg: str,
    *,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Weights ``w (B, T)`` (``dtype``, fp32 by default) with ``loss = sum(w * l)``.

    mask: ``(B, T)`` bool or float 0/1. Invalid tokens get weight 0. See ``LOSS_AGGS``.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (B, T), got shape {tuple(mask.shape)}")
    options = GRPOLossOptions(loss_agg=loss_agg, max_len=max_len)  # type: ignore[arg-type]
    m = _valid(mask).to(dtype)
    return m * grpo_row_scales(m.sum(dim=1), mask.shape[1], options)[:, None]


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def check_advantage_args(
    batch: int,
    seq: int,
    device: torch.device,
    *,
    advantages: Tensor | None,
    rewards: Tensor | None,
    group_size: int | None,
) -> None:
    """Raise ValueError (naming the argument) unless exactly one advantage source is valid."""
    if (advantages is None) == (rewards is None):
        raise ValueError("pass exactly one of advantages and rewards")
    if advantages is not None:
        if group_size is not None:
            raise ValueError("group_size is only used with rewards; got advantages")
        if advantages.device != device:
            raise ValueError(f"advantages is on {advantages.device} but the inputs on {device}")
        if tuple(advantages.shape) not in ((batch,), (batch, seq)):
            raise ValueError(
                f"advantages must have shape ({batch},) or ({batch}, {seq}), "
                f"got {tuple(advantages.shape)}"
            )
        if not advantages.is_floating_point():
            raise ValueError(f"advantages must be a floating tensor, got {advantages.dtype}")
        return
    assert rewards is not None
    if rewards.device != device:
        raise ValueError(f"rewards is on {rewards.device} but the inputs on {device}")
    check_shape("rewards", rewards, (batch,))
    if group_size is None:
        raise ValueError("group_size is required with rewards")
    check_group_size(group_size, batch)


def grpo_token_advantages(
    mask: Tensor,
    *,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    group_size: int | None = None,
    eps: float = ADV_EPS,
) -> Tensor:
    """Per-token advantages ``(B, T)``, fp32 (fp64 for fp64 input); validates the arguments.

    Exactly one of ``advantages`` (``(B,)`` per sequence, broadcast over tokens, or ``(B, T)``
    per token) and ``rewards`` (``(B,)``, normalised over groups of ``group_size`` consecutive
    rows) must be given. Values at masked positions are left as they are (their weight is 0).
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (B, T), got shape {tuple(mask.shape)}")
    check_advantage_args(
        *mask.shape, mask.device, advantages=advantages, rewards=rewards, group_size=group_size
    )
    options = GRPOLossOptions(group_size=group_size, adv_eps=eps)
    return _token_advantages(mask, advantages, rewards, options)


def _token_advantages(
    mask: Tensor, advantages: Tensor | None, rewards: Tensor | None, options: GRPOLossOptions
) -> Tensor:
    """``grpo_token_advantages`` without the checks (the caller validated the arguments)."""
    batch, seq = mask.shape
    if advantages is not None:
        adv = advantages.detach().to(float_dtype(advantages.dtype))
        return adv[:, None].expand(batch, seq) if adv.dim() == 1 else adv
    assert rewards is not None and options.group_size is not None
    adv = group_advantages_ref(rewards.detach(), options.group_size, eps=options.adv_eps)
    return adv[:, None].expand(batch, seq)


# --------------------------------------------------------------------------------------------
# The checks every entry point runs once
# --------------------------------------------------------------------------------------------


def check_grpo_inputs(x: GRPOInputs, options: GRPOLossOptions) -> None:
    """Validate the GRPO loss's tensors against ``options``; ValueError names the offending one.

    With ``x.logp`` None (the fused path) shapes and devices are checked against ``old_logp``.
    """
    logp, old_logp, ref_logp, mask, advantages, rewards = x
    first_name, first = ("logp", logp) if logp is not None else ("old_logp", old_logp)
    if first.dim() != 2:
        raise ValueError(f"{first_name} must be 2-D (B, T), got shape {tuple(first.shape)}")
    shape = tuple(first.shape)
    check_same_device(**x._asdict())
    named = (("logp", logp), ("old_logp", old_logp), ("ref_logp", ref_logp))
    for name, t in named:
        if t is None:
            continue
        check_shape(name, t, shape)
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    check_shape("mask", mask, shape)
    if mask.is_complex():
        raise ValueError(f"mask must be bool or real 0/1, got {mask.dtype}")
    check_advantage_args(
        *shape,
        first.device,
        advantages=advantages,
        rewards=rewards,
        group_size=options.group_size,
    )


def grpo_token_inputs(
    x: GRPOInputs, options: GRPOLossOptions, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """``(valid (B, T) bool, advantages (B, T), weights (B, T) in dtype)`` for inputs that
    ``check_grpo_inputs`` already validated (so nothing is checked a second time)."""
    mask = x.mask
    valid = _valid(mask)
    adv = _token_advantages(mask, x.advantages, x.rewards, options)
    scales = grpo_row_scales(valid.to(dtype).sum(dim=1), mask.shape[1], options)
    return valid, adv, valid.to(dtype) * scales[:, None]
