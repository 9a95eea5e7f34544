"""The metrics GRPO logs, from per-token tensors or from per-chunk partial sums.

Each row of metric partials (``METRIC_COLUMNS``) summarises one set of tokens; rows of disjoint
sets (chunks, or the Triton kernel's per-row output) combine exactly with
``grpo_metrics_from_partials`` (sums add, min/max reduce, advantage moments merge by Chan).
"""

from __future__ import annotations

import torch
from torch import Tensor

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
    dtype = torch.float64 if ratio.dtype == torch.float64 else torch.float32
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
