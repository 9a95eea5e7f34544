"""The benchmark's Liger-Kernel baseline computes our GRPO objective (skipped without liger-kernel).

Liger's chunked GRPO loss is plain PyTorch, so on CPU it doubles as an independent check of
``fused_linear_grpo_loss``: same loss and same hidden/weight gradients on a tiny head. Liger runs
with ``compiled=False`` so no inductor kernels enter the process (see tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dsm_engine.kernels import fused_linear_grpo_loss
from dsm_engine.kernels.advantages import group_advantages

pytest.importorskip("liger_kernel.chunked_loss")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels" / "bench_fused_linear.py"
B, T, H, V, G = 8, 7, 16, 300, 4


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_fused_linear_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _problem(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64) * 0.5
    targets = torch.randint(0, V, (B, T), generator=gen)
    with torch.no_grad():
        logp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[..., None])[..., 0]
    # Ratios well outside [0.8, 1.2] on both sides, so both clip branches are exercised.
    old = logp + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = torch.rand(B, T, generator=gen) > 0.3
    mask[2] = False  # an empty response: adds 0 and still counts in B
    mask[5, :2] = True
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    return hidden.to(dtype), weight.to(dtype), targets, old.float(), ref.float(), mask, rewards


def _grads(fn, hidden, weight):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_fused_linear_grpo_loss_equals_liger_grpo_loss_and_grads(impl):
    hidden, weight, targets, old, ref, mask, rewards = _problem(torch.float32)
    liger = _bench_module()._liger_grpo(compiled=False)
    assert liger is not None
    adv = group_advantages(rewards.float(), G)
    # Liger keeps its log-probs and accumulators in fp32 whatever the input dtype, so both run
    # in fp32; ours takes the grouped-rewards path (advantages normalised inside the kernel).
    want = _grads(lambda h, w: liger(h, w, targets, old, ref, mask, adv), hidden, weight)
    ours = _grads(
        lambda h, w: fused_linear_grpo_loss(
            h, w, targets, old, ref, mask, rewards=rewards.float(), group_size=G, impl=impl
        )[0],
        hidden,
        weight,
    )
    for name, got, exp in zip(("loss", "grad_hidden", "grad_weight"), ours, want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6, msg=name)


def test_liger_wrapper_is_the_paper_aggregation_not_token_mean():
    """Liger's default loss_type ("dapo") is our token-mean; the wrapper must pick "grpo"."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    hidden, weight, targets, old, ref, mask, rewards = _problem(torch.float32, seed=1)
    adv = group_advantages(rewards.float(), G)
    wrapped = _bench_module()._liger_grpo(compiled=False)(
        hidden, weight, targets, old, ref, mask, adv
    )
    paper, _ = fused_linear_grpo_loss(
        hidden, weight, targets, old, ref, mask, advantages=adv, impl="torch"
    )
    token_mean, _ = fused_linear_grpo_loss(
        hidden, weight, targets, old, ref, mask, advantages=adv, loss_agg="token-mean", impl="torch"
    )
    dapo, _ = LigerFusedLinearGRPOLoss(compiled=False)(
        hidden, weight, targets, mask.float(), adv, ref_per_token_logps=ref, old_per_token_logps=old
    )
    torch.testing.assert_close(wrapped, paper, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dapo, token_mean, rtol=1e-5, atol=1e-6)
    assert (paper - token_mean).abs() > 1e-3  # the two aggregations really differ here
