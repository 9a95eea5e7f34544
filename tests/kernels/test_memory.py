"""The fused paths never create a tensor with N·V elements (forward and backward); with
vocabulary chunks, none larger than one (token_chunk, vocab_chunk) logits block; and what the
``grad_weight_accum`` modes cost: ``"param"`` nothing beyond the gradients, ``"fp32"`` one
fp32 ``(V_local, H)`` accumulator (``V_local·H·4`` bytes)."""

from __future__ import annotations

import pytest
import torch
from _kernel_checks import seeded
from _memory_checks import LargestTensor, PeakLiveElements

from dsm_engine.kernels import (
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    fused_linear_logprobs,
)
from dsm_engine.kernels._head_chunks import _upcast_grads

B, T, H, V = 8, 12, 8, 500  # N·V = 48,000
TOKEN_CHUNK = 32  # full-vocabulary token chunks: 16,000 logits
# Vocabulary chunks: 16 x 64 = 1,024 logits per block (500 = 7 x 64 + 52, a ragged last block)
# over N = 4 x 8 tokens (N·V = 16,000; a full-vocab token chunk 8,000). H is 2 there so that
# the gradients themselves (V·H = 1,000, N·H = 64) fit under the bound.
VC_B, VC_T, VC_H, VC_TOKEN, VC_VOCAB = 4, 8, 2, 16, 64


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


@pytest.mark.parametrize("op", ["logprobs", "grpo"])
def test_cpu_default_chunks_hold_under_a_tenth_of_the_logits_beyond_the_gradients(op):
    """The CPU rule (``cpu_chunk_sizes``) with the PyTorch primitives: live bytes beyond the two
    fp32 gradients stay within 3 chunk buffers (logits and two fp32 temporaries, N·V/64 each)
    plus the slices' partial statistics (a few (64, N) stacks): under the 10% of the fp32
    logits N·V·4 that the issue sets."""
    b, t, h, v = 2, 16, 4, 32768  # N = 32; 64 vocabulary slices of 512
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(b, t, h, generator=gen, requires_grad=True)
    weight = (torch.randn(v, h, generator=gen) * 0.5).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=gen)
    old = torch.randn(b, t, generator=gen) * 0.1 - 9
    ref = old + 0.01
    mask = torch.ones(b, t, dtype=torch.bool)
    n = b * t
    with PeakLiveElements(in_bytes=True, inputs=(hidden, weight)) as rec:
        if op == "grpo":
            loss, _ = fused_linear_grpo_loss(
                hidden,
                weight,
                targets,
                old,
                ref,
                mask,
                rewards=torch.ones(b),
                group_size=2,
                impl="torch",
            )
        else:
            logp = fused_linear_logprobs(
                hidden.reshape(n, h), weight, targets.view(-1), impl="torch"
            )
            loss = logp.sum()
        loss.backward()
    grads = (n * h + v * h) * 4
    chunk = n * (v // 64) * 4
    stats = 12 * 64 * n * 4
    assert rec.peak <= grads + 3 * chunk + stats, (rec.peak, grads, chunk)
    assert rec.peak - grads <= 0.1 * n * v * 4


@pytest.mark.parametrize("mode", ["param", "fp32", "auto"])
def test_grad_weight_accumulator_size_per_mode(mode):
    """bf16, 8 token chunks. Live bytes beyond the two bf16 gradients: "param" only a chunk's
    buffers; "fp32" (and "auto", which picks it here) also the ``V·H·4``-byte accumulator, held
    while the gradients are computed and dropped after its one rounding (at the very end its
    bf16 copy is born while it is still alive, so the peak holds both)."""
    b, t, h, token_chunk = 4, 8, 256, 4  # N = 32 tokens, 8 chunks; V·H = 128,000
    hidden, weight, targets, old, ref, mask = _inputs(b, t, h)
    hidden = hidden.detach().bfloat16().requires_grad_()
    weight = weight.detach().bfloat16().requires_grad_()
    adv = torch.ones(b)
    with PeakLiveElements(
        in_bytes=True, inputs=(hidden, weight, targets, old, ref, mask, adv)
    ) as rec:
        loss, _ = fused_linear_grpo_loss(
            hidden,
            weight,
            targets,
            old,
            ref,
            mask,
            advantages=adv,
            token_chunk=token_chunk,
            grad_weight_accum=mode,
            impl="torch",
        )
        loss.backward()
    n = b * t
    grads = 2 * (n * h + V * h)
    accumulator = 4 * V * h  # 512,000 bytes
    # One chunk's bf16 logits, the torch impl's fp32 softmax intermediates (a few at once),
    # the CPU fallback's fp32 copies of a chunk (dlogits, hidden) and O(N) fp32 vectors:
    # well below the accumulator.
    chunk = 2 * token_chunk * V + 8 * 4 * token_chunk * V + 4 * token_chunk * h
    slack = chunk + 64 * 4 * n
    assert slack < accumulator / 3
    if mode == "param":
        assert rec.peak <= grads + slack, rec.peak
    else:
        assert grads + accumulator <= rec.peak <= grads + accumulator + slack, rec.peak
    assert weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("op", ["logprobs", "grpo"])
def test_cpu_training_path_holds_under_a_tenth_of_the_logits_beyond_the_gradients(op):
    """The engine's training path: a bf16 weight carrying megatron's fp32 ``main_grad``, the
    default ``grad_weight_accum`` ("auto" resolves to "main_grad"), the PyTorch primitives on
    CPU. Live bytes beyond the hidden gradient (the weight's goes into ``main_grad``, which
    exists before the call) stay within 10% of the fp32 logits N·V·4, with H/V large enough
    that fp32 ``(N, H)`` or ``(V/64, H)`` copies alone would break it (each ~6%)."""
    b, t, h, v = 2, 16, 512, 8192  # N = 32; N·V·4 = 1 MiB
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(b, t, h, generator=gen).bfloat16().requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).bfloat16().requires_grad_()
    weight.main_grad = torch.zeros(v, h)
    targets = torch.randint(0, v, (b, t), generator=gen)
    old = torch.randn(b, t, generator=gen) * 0.1 - 9
    ref = old + 0.01
    mask = torch.ones(b, t, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    n = b * t
    inputs = (hidden, weight, weight.main_grad, targets, old, ref, mask, adv)
    with PeakLiveElements(in_bytes=True, inputs=inputs) as rec:
        if op == "grpo":
            loss, _ = fused_linear_grpo_loss(
                hidden, weight, targets, old, ref, mask, advantages=adv, impl="torch"
            )
        else:
            loss = fused_linear_logprobs(
                hidden.reshape(n, h), weight, targets.view(-1), impl="torch"
            ).sum()
        loss.backward()
    hidden_grad = n * h * 2
    assert rec.peak - hidden_grad <= 0.1 * n * v * 4, (rec.peak, hidden_grad)
    assert weight.grad is None and weight.main_grad.abs().sum() > 0


@pytest.mark.parametrize("n", [32, 2048], ids=["cpu-rule-one-chunk", "one-pass-16-chunks"])
def test_masking_the_prompts_costs_at_most_two_gathered_chunks(n):
    """The GRPO op skips masked tokens (the trainer's path: fp32 ``main_grad``, ``grad_scale``)
    by gathering each token chunk's unmasked rows and scattering their gradient back: two
    ``(token_chunk, H)`` copies beyond what the unmasked batch holds. Under the CPU rule, whose
    one chunk is all N tokens, it does not skip them (those copies would be hidden's size)."""
    t, h, v = 16, 256, 1024
    b = n // t
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(b, t, h, generator=gen, requires_grad=True)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).requires_grad_()
    weight.main_grad = torch.zeros(v, h)
    targets = torch.randint(0, v, (b, t), generator=gen)
    old = torch.randn(b, t, generator=gen) * 0.1 - 7
    ref = old + 0.01
    adv = torch.randn(b, generator=gen)
    peaks = {}
    for kind, mask in (
        ("all", torch.ones(b, t, dtype=torch.bool)),
        ("prompts-masked", (torch.arange(t) >= t // 2).expand(b, t)),
    ):
        hidden.grad = None
        inputs = (hidden, weight, weight.main_grad, targets, old, ref, mask, adv)
        with PeakLiveElements(in_bytes=True, inputs=inputs) as rec:
            loss, _ = fused_linear_grpo_loss(
                hidden, weight, targets, old, ref, mask, advantages=adv, grad_scale=1.0
            )
            loss.backward()
        peaks[kind] = rec.peak
    chunk_rows = 0 if n < 2048 else n // 16  # the one-pass path's chunks (cpu_one_pass_rows)
    gathered = 2 * chunk_rows * h * 4
    assert peaks["prompts-masked"] - peaks["all"] <= gathered + 64 * n, peaks


# (C, Vc, H): H wider than the slice (hidden in column blocks; not one row of w fits the block,
# so w in column blocks), the slice wider than H (w in row blocks of C·Vc // H), a ragged mix.
@pytest.mark.parametrize("c, vc, h", [(3, 8, 40), (7, 64, 24), (5, 50, 64)])
def test_cpu_upcast_products_are_fp32_exact_and_copy_into_one_logits_block(c, vc, h):
    """The low-precision CPU gradient products (``acc += d @ w``, ``grad_weight += d.T @
    hidden``) equal float64 within fp32 rounding, and their fp32 copies of ``w`` and ``hidden``
    go into the ``(C, Vc)`` scratch block the chunk loop owns: no new tensor at all."""
    gen = seeded("upcast", c, vc, h)  # fresh inputs every run, replayable
    d32 = torch.randn(c, vc, generator=gen)
    w = torch.randn(vc, h, generator=gen).bfloat16()
    hidden = torch.randn(c, h, generator=gen).bfloat16()
    acc, grad_weight = torch.randn(c, h, generator=gen), torch.randn(vc, h, generator=gen)
    scratch = torch.empty(c * vc)
    want_acc = acc.double() + d32.double() @ w.double()
    want_gw = grad_weight.double() + d32.double().T @ hidden.double()
    inputs = (d32, w, hidden, acc, grad_weight, scratch)
    with PeakLiveElements(inputs=inputs) as rec:
        _upcast_grads(d32, w, hidden, acc, grad_weight, scratch=scratch)
    assert rec.peak == 0, rec.peak
    torch.testing.assert_close(acc.double(), want_acc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_weight.double(), want_gw, rtol=1e-5, atol=1e-5)
