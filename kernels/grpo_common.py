"""Pure-PyTorch pieces of the GRPO loss shared by every implementation.

Aggregation weights, advantages, per-token terms with their exact gradient, and the metrics.
``grpo_loss`` (Triton/PyTorch) and the fused linear path both build on these, so they agree on
the aggregation rules, the gradient at the clip boundary and the metric definitions.
Import them from ``dsm_engine.kernels.grpo_loss``, which re-exports them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dispatch import check_same_device, check_shape

LOSS_AGGS = (
    "seq-mean-token-mean",
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
ADV_EPS = 1e-6

# Columns of a metric-partials row. Each row summarises one set of tokens; rows combine with
# ``grpo_metrics_from_partials`` (sums add, min/max reduce, advantage moments merge by Chan).
METRIC_COLUMNS = (
    "count",
    "kl_sum",
    "clip_low",
    "clip_high",
    "ratio_sum",
    "ratio_min",
    "ratio_max",
    "adv_mean",
    "adv_m2",
    "nonfinite",
)
N_METRIC_COLUMNS = len(METRIC_COLUMNS)
METRIC_NAMES = (
    "kl_mean",
    "clip_frac_low",
    "clip_frac_high",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "adv_mean",
    "adv_std",
    "nonfinite",
)


def _float_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """fp32 math for fp32/bf16/fp16 inputs; fp64 when any input is fp64 (references)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _valid(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


# --------------------------------------------------------------------------------------------
# Argument checks (one definition each; every public GRPO entry point validates once)
# --------------------------------------------------------------------------------------------


def check_loss_agg(loss_agg: object) -> None:
    """ValueError naming ``loss_agg`` unless it is one of ``LOSS_AGGS``."""
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")


def check_max_len(max_len: object) -> None:
    """ValueError naming ``max_len`` unless it is None or a positive int."""
    if max_len is not None and (
        isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0
    ):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")


def check_clip_eps(clip_eps_low: float, clip_eps_high: float) -> None:
    """ValueError naming the clip range bound that is negative or NaN."""
    for name, eps in (("clip_eps_low", clip_eps_low), ("clip_eps_high", clip_eps_high)):
        if not eps >= 0:
            raise ValueError(f"{name} must be >= 0, got {eps!r}")


# --------------------------------------------------------------------------------------------
# Aggregation weights
# --------------------------------------------------------------------------------------------


def grpo_row_scales(
    row_count: Tensor, loss_agg: str, seq_len: int, *, max_len: int | None = None
) -> Tensor:
    """Per-row factor c_b so that ``loss = sum_b c_b * sum_t mask_{b,t} * l_{b,t}``.

    row_count: ``(B,)`` number of valid tokens per row (any float dtype; result has its dtype).
    seq_len: the padded length T (used by ``seq-mean-token-sum-norm`` unless ``max_len``).
    """
    check_loss_agg(loss_agg)
    check_max_len(max_len)
    n_rows = row_count.shape[0]
    ones = torch.ones_like(row_count)
    if loss_agg == "seq-mean-token-mean":
        # A row with no valid token contributes 0 but still counts in B.
        return ones / (row_count.clamp(min=1) * n_rows)
    if loss_agg == "token-mean":
        return ones / row_count.sum().clamp(min=1)
    if loss_agg == "seq-mean-token-sum":
        return ones / n_rows
    return ones / (n_rows * (max_len if max_len is not None else seq_len))


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
    m = _valid(mask).to(dtype)
    scales = grpo_row_scales(m.sum(dim=1), loss_agg, mask.shape[1], max_len=max_len)
    return m * scales[:, None]


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def check_group_size(group_size: object, batch: int, *, name: str = "group_size") -> int:
    """Validate ``group_size`` as a positive int dividing ``batch``; return it."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"{name} must be a positive int, got {group_size!r}")
    if batch % group_size != 0:
        raise ValueError(f"{name}={group_size} does not divide the batch size {batch}")
    return group_size


def group_normalise(rewards: Tensor, group_size: int, *, eps: float = ADV_EPS) -> Tensor:
    """``(r - mean) / (std + eps)`` within consecutive groups of ``group_size`` (population std).

    rewards: ``(B,)`` -> ``(B,)`` in fp32 (fp64 for fp64 input). A group whose rewards are all
    equal gets exactly 0 (its mean may differ from the rewards by rounding, so it is forced).
    """
    dtype = _float_dtype(rewards.dtype)
    r = rewards.to(dtype).reshape(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = (r - mean).square().mean(dim=1, keepdim=True).sqrt()
    adv = (r - mean) / (std + eps)
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(-1)


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
    return _token_advantages(mask, advantages, rewards, group_size, eps)


def _token_advantages(
    mask: Tensor,
    advantages: Tensor | None,
    rewards: Tensor | None,
    group_size: int | None,
    eps: float = ADV_EPS,
) -> Tensor:
    """``grpo_token_advantages`` without the checks (the caller validated the arguments)."""
    batch, seq = mask.shape
    if advantages is not None:
        adv = advantages.detach().to(_float_dtype(advantages.dtype))
        return adv[:, None].expand(batch, seq) if adv.dim() == 1 else adv
    assert rewards is not None and group_size is not None
    return group_normalise(rewards.detach(), group_size, eps=eps)[:, None].expand(batch, seq)


def check_grpo_inputs(
    logp: Tensor | None,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    advantages: Tensor | None,
    rewards: Tensor | None,
    group_size: int | None,
    clip_eps_low: float,
    clip_eps_high: float,
    loss_agg: str,
    max_len: int | None,
) -> None:
    """Validate the GRPO loss arguments once; ValueError names the offending one.

    ``logp`` is ``None`` on the fused path (log-probs do not exist yet): shapes and devices
    are then checked against ``old_logp``.
    """
    first_name, first = ("logp", logp) if logp is not None else ("old_logp", old_logp)
    if first.dim() != 2:
        raise ValueError(f"{first_name} must be 2-D (B, T), got shape {tuple(first.shape)}")
    shape = tuple(first.shape)
    check_same_device(
        logp=logp,
        old_logp=old_logp,
        ref_logp=ref_logp,
        mask=mask,
        advantages=advantages,
        rewards=rewards,
    )
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
        *shape, first.device, advantages=advantages, rewards=rewards, group_size=group_size
    )
    check_clip_eps(clip_eps_low, clip_eps_high)
    check_loss_agg(loss_agg)
    check_max_len(max_len)


def grpo_token_inputs(
    mask: Tensor,
    *,
    advantages: Tensor | None,
    rewards: Tensor | None,
    group_size: int | None,
    loss_agg: str,
    max_len: int | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(valid (B, T) bool, advantages (B, T), weights (B, T) in dtype)`` for arguments that
    ``check_grpo_inputs`` already validated (so nothing is checked a second time)."""
    valid = _valid(mask)
    adv = _token_advantages(mask, advantages, rewards, group_size)
    scales = grpo_row_scales(valid.to(dtype).sum(dim=1), loss_agg, mask.shape[1], max_len=max_len)
    return valid, adv, valid.to(dtype) * scales[:, None]


# --------------------------------------------------------------------------------------------
# Per-token terms
# --------------------------------------------------------------------------------------------


def grpo_token_loss_and_grad(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    adv: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """Elementwise loss terms ``l`` and their exact derivative ``dl/dlogp`` (same-shaped inputs).

    Math runs in fp32 (fp64 when an input is fp64); both outputs have that dtype.
    Gradient convention: where the clipped term is strictly smaller (``r`` outside the clip
    range on the side the sign of ``A`` makes binding) the PPO part has zero gradient; at a tie
    of the ``min`` (which includes every ``r`` inside the range) the unclipped branch's gradient
    ``-A*r`` is used. This is also what autograd gives for ``torch.min``+``torch.clamp``, and
    the Triton kernel follows the same rule.
    """
    dtype = _float_dtype(logp.dtype, old_logp.dtype, ref_logp.dtype, adv.dtype)
    logp, old_logp, ref_logp, adv = (t.to(dtype) for t in (logp, old_logp, ref_logp, adv))
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    use_unclipped = unclipped <= clipped
    d = ref_logp - logp
    em1 = torch.expm1(d)  # expm1 keeps k3 ~ d^2/2 accurate when ref is close to logp
    k3 = em1 - d
    loss = -torch.minimum(unclipped, clipped) + beta * k3
    grad = torch.where(use_unclipped, -unclipped, torch.zeros_like(unclipped)) - beta * em1
    return loss, grad


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def grpo_metric_partials(
    valid: Tensor,
    ratio: Tensor,
    adv: Tensor,
    kl: Tensor,
    loss_terms: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
) -> Tensor:
    """Summarise a set of tokens into one ``(N_METRIC_COLUMNS,)`` row (see ``METRIC_COLUMNS``).

    All inputs share one shape; ``valid`` is bool. Rows from disjoint token sets (chunks)
    combine exactly with ``grpo_metrics_from_partials(torch.stack(rows))``. Dtype: fp32, or
    fp64 when ``ratio`` is fp64.
    """
    dtype = _float_dtype(ratio.dtype)
    v = valid.reshape(-1)
    r, a, k, lt = (t.reshape(-1)[v].to(dtype) for t in (ratio, adv, kl, loss_terms))
    n = r.new_tensor(float(r.numel())) if r.numel() else r.new_zeros(())
    if r.numel():
        a_mean = a.mean()
        a_m2 = (a - a_mean).square().sum()
        r_min, r_max = r.min(), r.max()
    else:
        a_mean = a_m2 = r.new_zeros(())
        r_min, r_max = r.new_tensor(float("inf")), r.new_tensor(float("-inf"))
    return torch.stack(
        [
            n,
            k.sum(),
            ((r < 1.0 - clip_eps_low) & (a < 0)).sum().to(dtype),
            ((r > 1.0 + clip_eps_high) & (a > 0)).sum().to(dtype),
            r.sum(),
            r_min,
            r_max,
            a_mean,
            a_m2,
            (~torch.isfinite(lt)).sum().to(dtype),
        ]
    )


def grpo_metrics_from_partials(partials: Tensor) -> dict[str, Tensor]:
    """Combine metric-partials rows ``(..., N_METRIC_COLUMNS)`` into the metrics dict.

    Returns 0-d fp32 tensors: ``kl_mean``, ``clip_frac_low``, ``clip_frac_high``,
    ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``adv_mean``, ``adv_std`` (population),
    all over valid tokens, and ``nonfinite`` (count of valid tokens with a non-finite loss
    term). With no valid token every metric is 0. Combination is done in fp64 (tiny tensors).
    """
    p = partials.detach().reshape(-1, N_METRIC_COLUMNS).to(torch.float64)
    n_i = p[:, 0]
    n = n_i.sum()
    denom = n.clamp(min=1)
    adv_mean = (n_i * p[:, 7]).sum() / denom
    # Chan et al.: M2 = sum M2_i + sum n_i (mean_i - mean)^2; exact for disjoint token sets.
    adv_m2 = p[:, 8].sum() + (n_i * (p[:, 7] - adv_mean).square()).sum()
    has = n > 0
    zero = torch.zeros_like(n)
    out = {
        "kl_mean": p[:, 1].sum() / denom,
        "clip_frac_low": p[:, 2].sum() / denom,
        "clip_frac_high": p[:, 3].sum() / denom,
        "ratio_mean": p[:, 4].sum() / denom,
        "ratio_min": torch.where(has, p[:, 5].amin(), zero),
        "ratio_max": torch.where(has, p[:, 6].amax(), zero),
        "adv_mean": adv_mean,
        "adv_std": (adv_m2 / denom).clamp(min=0).sqrt(),
        "nonfinite": p[:, 9].sum(),
    }
    return {k: v.to(torch.float32) for k, v in out.items()}


def grpo_metrics(
    valid: Tensor,
    ratio: Tensor,
    adv: Tensor,
    kl: Tensor,
    loss_terms: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
) -> dict[str, Tensor]:
    """The GRPO metrics dict from per-token tensors of one shape (see
    ``grpo_metrics_from_partials`` for the keys). ``valid`` is the bool token mask."""
    with torch.no_grad():
        row = grpo_metric_partials(
            valid,
            ratio,
            adv,
            kl,
            loss_terms,
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
        )
    return grpo_metrics_from_partials(row)
