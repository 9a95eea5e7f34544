"""lm_head matmul fused with log-softmax/gather: logits never exist in full.

``fused_linear_logprobs`` here; ``fused_linear_grpo_loss`` (``fused_linear_grpo``) adds the
GRPO loss on top of the same chunk loops (``_head_chunks``) and argument checks (``_head``).

Both ops walk the tokens in chunks of ``token_chunk`` rows and, when one token chunk over the
whole local vocabulary would exceed the memory budget, the vocabulary in chunks of
``vocab_chunk`` rows of ``weight`` (``_head_chunks``: the rule, the loops and the online
log-sum-exp merge). A chunk's logits come from one cuBLAS matmul in the input dtype, the row
statistics from the Triton kernel (``_logsoftmax``), and the logits gradient is written over the
chunk's logits buffer in place before the two grad matmuls.

Extra memory: O(N) fp32 row statistics, one ``(token_chunk, vocab_chunk)`` logits buffer (with
the PyTorch primitives also two fp32 temporaries of its size; all allocated once per pass and
reused by every chunk, ``_head_chunks.ChunkBuffers``) and,
with vocabulary chunks and low-precision inputs, a ``(token_chunk, H)`` fp32 accumulator for
the hidden gradient; with ``grad_weight_accum`` resolving to ``"fp32"`` (below), an fp32
``(V_local, H)`` accumulator for the weight gradient (none with ``"param"`` or
``"main_grad"``). Vocabulary sharding across ranks is the tensor-parallel path (``tensor_parallel``); vocabulary chunks are slices inside this rank's
shard.

FLOPs: ``fused_linear_logprobs`` costs 2NHV forward and recomputes the logits in backward
(2NHV + 4NHV), with or without vocabulary chunks. ``fused_linear_grpo_loss`` knows each token's
``dloss/dlogp`` as soon as its chunk's log-probs are known, so when gradients are needed it
computes them in the forward chunk loop: 6NHV in total over the full vocabulary; with ``K``
vocabulary chunks the gradient pass recomputes ``K - 1`` of them (up to 8NHV). In
``"main_grad"`` mode the weight's gradient goes straight into ``main_grad``, which needs the
incoming gradient's scale: given as ``grad_scale`` (the trainer knows it), the GRPO op still
computes everything in forward; without it the op is ``fused_linear_logprobs`` under the GRPO
loss, 8NHV. On CPU the default chunks are vocabulary slices (``_head_chunks``' CPU rule), so
the GRPO op recomputes them (8NHV, ~5% of the fp32 logits beyond the gradients), except in
fp32 from N = 2,048 tokens, where it walks token chunks of N/16 rows over the whole
vocabulary and turns their logits into the gradient in place (6NHV, one buffer of ~6.25%).

Precision: chunk logits are the matmul's output in the input dtype (as a materialised bf16
lm_head would give); all softmax/loss math is fp32; ``grad_hidden`` of a token chunk is summed
over vocabulary chunks in fp32. ``grad_weight`` sums over *all* token chunks, and where that
sum is held is the ``grad_weight_accum`` keyword (``GRAD_WEIGHT_ACCUM``):

* ``"fp32"``: an fp32 ``(V_local, H)`` accumulator (vocabulary chunks add into their rows),
  cast to the weight's dtype once at the end: one rounding, as plain PyTorch's single matmul
  over the materialised logits. Costs ``V_local·H·4`` bytes while the op runs (forward of
  ``fused_linear_grpo_loss``, backward of ``fused_linear_logprobs``).
* ``"param"``: accumulate with ``addmm_`` in the weight's dtype: no extra memory, but one
  bf16/fp16 rounding of the running sum per token chunk (``ceil(N / token_chunk)`` of them,
  32 at N=8192 with 256-row chunks), whose error grows with the chunk count and can exceed
  twice plain PyTorch's error.
* ``"main_grad"``: add straight into ``weight.main_grad`` (the fp32 gradient buffer that
  megatron-core's ``DistributedDataParallel`` gives each parameter): fp32 accuracy and no
  extra memory; the weight's ``.grad`` stays empty for DDP's hook (``_head``'s docstring).
* ``"auto"`` (default): ``"main_grad"`` when the weight has a ``main_grad`` (the GRPO trainer
  under megatron's DDP), else ``"fp32"`` when the weight is bf16/fp16 and there is more than
  one token chunk, else ``"param"`` (an fp32 weight, or a single chunk, rounds once anyway).

Memory against the target (peak beyond inputs and gradients <= 10% of the materialised
fp32 logits ``N·V·4``): the fp32 accumulator is ``V·H·4`` bytes, i.e. ``H/N`` of those logits:
100% at H=4096, N=4096; 50% at N=8192; 25% at N=16384 (V=102,400). ``"param"`` and
``"main_grad"`` meet the target; ``"fp32"`` trades it for PyTorch-level ``grad_weight``
accuracy in low precision when no ``main_grad`` exists.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ._head import grad_weight_accumulator, grad_weight_result, resolve_head
from ._head_chunks import Head, chunk_buffers, chunk_grads, chunk_stats
from .logprobs import logprobs_from_logits_ref
from .options import HeadOptions, from_keywords
from .tensor_parallel import all_reduce_sum_, combine_stats


class FusedLinearLogprobs(torch.autograd.Function):
    """Chunked lm_head + log-softmax + gather: ``(logp (N,), entropy (N,))`` from
    ``hidden (N, H)``; backward recomputes each chunk's logits (``fused_linear_logprobs``)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, group, head: Head):
        n = hidden.shape[0]
        lse = hidden.new_empty(n, dtype=torch.float32)
        tgt, px = torch.empty_like(lse), torch.empty_like(lse)
        buffers = chunk_buffers(head, hidden, n, weight.shape[0])
        for s in range(0, n, head.token_chunk):
            e = min(s + head.token_chunk, n)
            stats, _ = chunk_stats(head, hidden[s:e], weight, targets[s:e], buffers=buffers)
            lse[s:e], tgt[s:e], px[s:e] = combine_stats(*stats, group)
        ctx.save_for_backward(hidden, weight, targets, lse, px)
        ctx.group, ctx.head = group, head
        # An unused entropy gets None in backward, not a zero (N,) that would take the
        # entropy branch of the gradient (more passes and chunk-sized temporaries).
        ctx.set_materialize_grads(False)
        return tgt - lse, lse - px

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, targets, lse, px = ctx.saved_tensors
        head: Head = ctx.head
        n = hidden.shape[0]
        if grad_logp is None and grad_ent is None:
            return None, None, None, None, None
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = grad_weight_accumulator(weight, head) if need_w else None
        buffers = chunk_buffers(head, hidden, n, weight.shape[0])
        for s in range(0, n, head.token_chunk):
            e = min(s + head.token_chunk, n)
            chunk_grads(
                head,
                hidden[s:e],
                weight,
                targets[s:e],
                lse[s:e],
                px[s:e],
                grad_logp[s:e],
                None if grad_ent is None else grad_ent[s:e],
                grad_hidden=grad_h[s:e] if need_h else None,
                grad_weight=grad_w,
                buffers=buffers,
            )
        del buffers
        if need_h:
            all_reduce_sum_(grad_h, ctx.group)
        if need_w:
            grad_w = grad_weight_result(grad_w, weight, head)
        return grad_h, grad_w, None, None, None


def fused_linear_logprobs_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Materialised reference: ``logprobs_from_logits_ref(hidden @ weight.T, targets)``."""
    return logprobs_from_logits_ref(
        hidden @ weight.T, targets, temperature=temperature, return_entropy=return_entropy
    )


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    head: HeadOptions | None = None,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
    impl: str = "auto",
    **head_keywords: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, chunked.

    Args:
        hidden: ``(N, H)`` fp32/bf16/fp16 (replicated on every rank with ``tp_group``).
        weight: ``(V_local, H)``, same dtype: the lm_head (this rank's vocabulary shard).
        targets: ``(N,)`` integer global ids in ``[0, V_local·world)``.
        head: a ``HeadOptions`` (``temperature``, ``token_chunk``, ``vocab_chunk``,
            ``grad_weight_accum``), or its fields as keywords. ``grad_weight_accum``:
            ``"fp32"`` sums ``grad_weight`` over token chunks in an fp32 ``(V_local, H)``
            buffer during backward (``V_local·H·4`` extra bytes; rounded once, as plain
            PyTorch), ``"param"`` in the weight's dtype (no extra memory, one rounding per
            token chunk), ``"main_grad"`` into ``weight.main_grad`` (no extra memory, fp32),
            ``"auto"``: ``"main_grad"`` when the weight has one, else ``"fp32"`` for a
            bf16/fp16 weight with more than one token chunk, else ``"param"``. See the module
            docstring.
        impl: ``"auto"``/``"triton"``/``"torch"``: which log-softmax primitives run on each
            chunk (``torch`` is the same chunked algorithm in plain PyTorch).

    Returns:
        fp32 ``(N,)`` log-probs (and ``(N,)`` entropy when ``return_entropy``); gradients flow
        to ``hidden`` (all-reduced over ``tp_group``) and ``weight``. Never builds ``(N, V)``:
        the temporaries are one ``(token_chunk, vocab_chunk)`` logits buffer and, in
        ``"fp32"`` mode, the ``(V_local, H)`` fp32 grad_weight accumulator.
    """
    head = from_keywords(HeadOptions, head, head_keywords, name="head")
    plan = resolve_head(hidden, weight, targets, head, hidden_dims=2, tp_group=tp_group, impl=impl)
    logp, ent = FusedLinearLogprobs.apply(hidden, weight, targets.contiguous(), tp_group, plan)
    return (logp, ent) if return_entropy else logp
