"""GAE equals the textbook backward recursion, written as a plain loop in float64, on rows of
different lengths, with a prompt offset, right padding and a masked hole (a tool output)."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.grpo.gae import gae


def gae_loop(rewards, values, mask, gamma, lam):
    """A_t = δ_t + γλ A_{t+1}, δ_t = r_t + γ V_{t+1} - V_t over each row's masked steps."""
    adv = torch.zeros_like(rewards, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if mask[b, t]]
        running = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_v = float(values[b, steps[i + 1]]) if i + 1 < len(steps) else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv


def _mask() -> torch.Tensor:
    m = torch.zeros(5, 9, dtype=torch.bool)
    m[0, 2:9] = True  # prompt offset, full to the end
    m[1, 0:3] = True  # short, right-padded
    m[2, 1:8] = True
    m[2, 4:6] = False  # a tool output between two policy segments
    m[3, 8] = True  # a single token
    # row 4: no response token at all
    return m


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_direct_loop_fp64(gamma, lam):
    g = torch.Generator().manual_seed(0)
    mask = _mask()
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    values = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want = gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret, torch.where(mask, want + values, 0.0), rtol=0, atol=1e-12)
    assert adv.dtype == torch.float64
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_lambda_one_gives_discounted_return_minus_value():
    """λ = 1: A_t = Σ_k γ^(k-t) r_k - V_t (Monte Carlo), whatever the later values are."""
    mask = torch.tensor([[False, True, True, True]])
    rewards = torch.tensor([[9.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[7.0, 0.5, -2.0, 3.0]], dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    torch.testing.assert_close(
        adv, torch.tensor([[0.0, 0.25 - 0.5, 0.5 + 2.0, 1.0 - 3.0]]).double()
    )
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.25, 0.5, 1.0]]).double())


def test_float32_matches_float64_and_shape_errors():
    g = torch.Generator().manual_seed(1)
    mask = _mask()
    rewards = torch.randn(mask.shape, generator=g)
    values = torch.randn(mask.shape, generator=g)
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    want = gae_loop(rewards.double(), values.double(), mask, 1.0, 0.95)
    torch.testing.assert_close(adv.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same"):
        gae(rewards[:, :3], values, mask, gamma=1.0, lam=0.95)
    with pytest.raises(ValueError, match="gamma"):
        gae(rewards, values, mask, gamma=1.5, lam=0.95)
