"""The fused paths never create a tensor with N·V elements (forward and backward)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dsm_engine.kernels import (
    default_chunk_size,
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    fused_linear_logprobs,
)

B, T, H, V = 8, 12, 8, 500  # N·V = 48,000; the default chunk is 32 rows (16,000 logits)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


def _inputs():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, H, generator=gen, requires_grad=True)
    weight = (torch.randn(V, H, generator=gen) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=gen)
    old = torch.randn(B, T, generator=gen) * 0.1 - 6
    ref = torch.randn(B, T, generator=gen) * 0.1 - 6
    mask = torch.rand(B, T, generator=gen) > 0.2
    return hidden, weight, targets, old, ref, mask


def test_the_recorder_sees_materialised_logits():
    hidden, weight, targets, old, ref, mask = _inputs()
    with LargestTensor() as rec:
        loss, _ = fused_linear_grpo_loss_ref(
            hidden, weight, targets, old, ref, mask, rewards=torch.ones(B), group_size=4
        )
        loss.backward()
    assert rec.largest >= B * T * V


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_logprobs_never_allocates_n_by_v(impl):
    hidden, weight, targets, *_ = _inputs()
    chunk = default_chunk_size(B * T, H, V)
    assert chunk * V < B * T * V
    with LargestTensor() as rec:
        lp, ent = fused_linear_logprobs(
            hidden.reshape(-1, H), weight, targets.view(-1), return_entropy=True, impl=impl
        )
        (lp.sum() + ent.sum()).backward()
    assert rec.largest <= chunk * V, (rec.largest, rec.op)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_grpo_loss_never_allocates_n_by_v(impl):
    hidden, weight, targets, old, ref, mask = _inputs()
    chunk = default_chunk_size(B * T, H, V)
    with LargestTensor() as rec:
        loss, metrics = fused_linear_grpo_loss(
            hidden, weight, targets, old, ref, mask, rewards=torch.ones(B), group_size=4, impl=impl
        )
        loss.backward()
    assert rec.largest <= chunk * V, (rec.largest, rec.op)
    assert hidden.grad is not None and weight.grad is not None
