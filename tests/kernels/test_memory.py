"""The fused paths never create a tensor with N·V elements (forward and backward); with
vocabulary chunks, none larger than one (token_chunk, vocab_chunk) logits block."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dsm_engine.kernels import (
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    fused_linear_logprobs,
)

B, T, H, V = 8, 12, 8, 500  # N·V = 48,000
TOKEN_CHUNK = 32  # full-vocabulary token chunks: 16,000 logits
# Vocabulary chunks: 16 x 64 = 1,024 logits per block (500 = 7 x 64 + 52, a ragged last block)
# over N = 4 x 8 tokens (N·V = 16,000; a full-vocab token chunk 8,000). H is 2 there so that
# the gradients themselves (V·H = 1,000, N·H = 64) fit under the bound.
VC_B, VC_T, VC_H, VC_TOKEN, VC_VOCAB = 4, 8, 2, 16, 64


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


class PeakLiveElements(TorchDispatchMode):
    """Records the peak of the summed sizes (in elements) of the storages that ops produce
    while active and that are still alive: two chunk buffers alive at once count twice."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._storages: set[int] = set()

    def _release(self, key: int, n: int) -> None:
        self._storages.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
                continue
            key = t.untyped_storage().data_ptr()
            if key in self._storages:  # a view or an in-place result: no new memory
                continue
            n = t.untyped_storage().nbytes() // t.element_size()
            self._storages.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key, n)
        return out


def _inputs(b=B, t=T, h=H):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=gen, requires_grad=True)
    weight = (torch.randn(V, h, generator=gen) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (b, t), generator=gen)
    old = torch.randn(b, t, generator=gen) * 0.1 - 6
    ref = torch.randn(b, t, generator=gen) * 0.1 - 6
    mask = torch.rand(b, t, generator=gen) > 0.2
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
    assert TOKEN_CHUNK * V < B * T * V
    with LargestTensor() as rec:
        lp, ent = fused_linear_logprobs(
            hidden.reshape(-1, H),
            weight,
            targets.view(-1),
            return_entropy=True,
            token_chunk=TOKEN_CHUNK,
            impl=impl,
        )
        (lp.sum() + ent.sum()).backward()
    assert rec.largest <= TOKEN_CHUNK * V, (rec.largest, rec.op)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_grpo_loss_never_allocates_n_by_v(impl):
    hidden, weight, targets, old, ref, mask = _inputs()
    with LargestTensor() as rec:
        loss, metrics = fused_linear_grpo_loss(
            hidden,
            weight,
            targets,
            old,
            ref,
            mask,
            rewards=torch.ones(B),
            group_size=4,
            token_chunk=TOKEN_CHUNK,
            impl=impl,
        )
        loss.backward()
    assert rec.largest <= TOKEN_CHUNK * V, (rec.largest, rec.op)
    assert hidden.grad is not None and weight.grad is not None


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_vocab_chunked_logprobs_allocate_at_most_one_chunk_block(impl):
    hidden, weight, targets, *_ = _inputs(VC_B, VC_T, VC_H)
    with LargestTensor() as rec:
        lp, ent = fused_linear_logprobs(
            hidden.reshape(-1, VC_H),
            weight,
            targets.view(-1),
            return_entropy=True,
            token_chunk=VC_TOKEN,
            vocab_chunk=VC_VOCAB,
            impl=impl,
        )
        (lp.sum() + ent.sum()).backward()
    # Bounded by one block: far below both N·V (16,000) and a full-vocab token chunk (8,000).
    assert rec.largest <= VC_TOKEN * VC_VOCAB, (rec.largest, rec.op)
    assert hidden.grad is not None and weight.grad is not None


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_vocab_chunked_grpo_loss_allocates_at_most_one_chunk_block(impl):
    hidden, weight, targets, old, ref, mask = _inputs(VC_B, VC_T, VC_H)
    with LargestTensor() as rec:
        loss, _ = fused_linear_grpo_loss(
            hidden,
            weight,
            targets,
            old,
            ref,
            mask,
            rewards=torch.ones(VC_B),
            group_size=4,
            token_chunk=VC_TOKEN,
            vocab_chunk=VC_VOCAB,
            impl=impl,
        )
        loss.backward()
    assert rec.largest <= VC_TOKEN * VC_VOCAB, (rec.largest, rec.op)
    assert hidden.grad is not None and weight.grad is not None


def test_vocab_chunked_grpo_loss_holds_one_chunk_block_at_a_time():
    """The gradient pass reuses the statistics pass's last block without keeping a second
    reference: live memory beyond the two gradients is one block plus O(N) vectors."""
    b, t, h, token_chunk, vocab_chunk = 4, 8, 2, 32, 128  # 500 = 3 x 128 + 116
    hidden, weight, targets, old, ref, mask = _inputs(b, t, h)
    with PeakLiveElements() as rec:
        loss, _ = fused_linear_grpo_loss(
            hidden,
            weight,
            targets,
            old,
            ref,
            mask,
            rewards=torch.ones(b),
            group_size=4,
            token_chunk=token_chunk,
            vocab_chunk=vocab_chunk,
            impl="triton",
        )
        loss.backward()
    n = b * t
    grads = n * h + V * h
    # A second live block would add 116 x 32 = 3,712 elements; the O(N) vectors take < 64·N.
    assert rec.peak <= grads + token_chunk * vocab_chunk + 64 * n, rec.peak
