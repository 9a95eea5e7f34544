"""Truncated importance sampling weights the policy-gradient term only, capped at tis_cap."""

from __future__ import annotations

import torch

from dsm_engine.grpo.step import mismatch_metrics, token_advantages
from dsm_engine.kernels import grpo_loss_ref


def test_tis_weights_scale_the_pg_term_and_leave_kl_alone():
    g = torch.Generator().manual_seed(0)
    b, t, cap = 4, 6, 1.5
    logp = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3 - 1
    old = logp + 0.1 * torch.randn(b, t, generator=g, dtype=torch.float64)
    sampler = old + 0.8 * torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = logp + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0], dtype=torch.float64)
    adv_tok, stats = token_advantages(adv, old, sampler, mask, cap)
    w = torch.exp(old - sampler).clamp(max=cap)
    assert 0 < stats["tis_clipped_frac"] < 1
    loss, _ = grpo_loss_ref(logp, old, ref, mask, advantages=adv_tok, beta=0.04)
    r = torch.exp(logp - old)
    pg = -torch.minimum(r * adv[:, None], r.clamp(0.8, 1.2) * adv[:, None]) * w
    d = ref - logp
    per_tok = pg + 0.04 * (torch.exp(d) - d - 1)
    m = mask.double()
    expected = ((per_tok * m).sum(1) / m.sum(1)).mean()
    torch.testing.assert_close(loss.double(), expected)
    assert token_advantages(adv, old, sampler, mask, None)[0] is adv


def test_mismatch_metrics_over_response_tokens():
    a = torch.tensor([[0.0, -1.0, -2.0]])
    b = torch.tensor([[5.0, -1.5, -2.0]])
    mask = torch.tensor([[False, True, True]])
    m = mismatch_metrics(a, b, mask)
    assert abs(m["mismatch_abs"] - 0.25) < 1e-7 and abs(m["mismatch_max"] - 0.5) < 1e-7
    assert abs(m["mismatch_exp_abs"] - (torch.exp(torch.tensor(0.5)) + 1) / 2) < 1e-6
