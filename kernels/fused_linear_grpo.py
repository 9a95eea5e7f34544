"""The GRPO loss straight from the lm_head's input: ``(B, T, V)`` logits never exist.

Two paths over the chunk loops of ``_head_chunks`` (FLOPs and memory: ``fused_linear``'s
module docstring):

* gradients in the forward chunk loop (``grad_weight_accum`` ``"fp32"``/``"param"``, or no
  gradient wanted): a token chunk's logits give its log-probs, the GRPO terms and their
  gradient (``grpo_token_terms``, the formula every path shares), then both gradient matmuls
  before the next chunk; ``backward`` only scales the stored gradients. 6NHV.
* ``"main_grad"`` with ``grad_scale`` (the gradient backward will bring, known to a trainer):
  as above, the weight's gradient times ``grad_scale`` going straight into
  ``weight.main_grad`` during the forward; backward checks the scale it receives.
* ``"main_grad"`` without it: ``FusedLinearLogprobs`` under ``grpo_loss``; the logits are
  recomputed in backward, once the incoming gradient's scale is known, and the weight's
  gradient goes straight into ``weight.main_grad``. 8NHV, no ``(V_local, H)`` buffer.

On the CPU in fp32 (the PyTorch primitives), token chunks over the whole vocabulary take a
one-pass form of the first path: each chunk's logits are turned in place into their gradient
(``_head_chunks.one_pass_stats``/``one_pass_grads``), so one chunk-sized buffer is all it
holds, against three for the primitives. Without chunk sizes it is picked from N = 2,048
tokens up (``cpu_one_pass_rows``: chunks of N/16 rows, ~6.25% of the fp32 logits): 6NHV.
Below that, chunks so narrow would stream the ``(V, H)`` weight and its gradient once per
few rows, and the CPU rule's vocabulary slices (8NHV: they need each row's global ``lse``
before any gradient, hence a second pass over the logits) are faster.

The first two paths run only the unmasked tokens through the head when a token chunk is at
most an eighth of the tokens (the GPU's chunks, the CPU's one-pass chunks; each chunk gathers
its rows): prompts and padding, often half of a GRPO batch, then cost no head FLOPs, and
whatever their hidden states hold cannot reach the loss or the gradients.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from ._dispatch import check_same_device, check_shape
from ._head import (
    grad_weight_accumulator,
    grad_weight_result,
    resolve_head,
    sums_into_main_grad,
)
from ._head_chunks import (
    Head,
    chunk_buffers,
    chunk_grads,
    chunk_stats,
    one_pass_grads,
    one_pass_stats,
)
from .fused_linear import FusedLinearLogprobs, fused_linear_logprobs_ref
from .grpo_inputs import GRPOInputs, check_grpo_inputs, grpo_token_inputs
from .grpo_loss import grpo_loss_checked, grpo_loss_ref
from .grpo_metrics import grpo_metrics
from .grpo_token import grpo_token_terms
from .options import GRPOLossOptions, HeadOptions, from_keywords, split_keywords
from .tensor_parallel import all_reduce_sum_, combine_stats


class _Tokens(NamedTuple):
    """Per-token constants of the loss, flat ``(N,)``: fp32 old/ref log-probs and advantages,
    the aggregation weights and the bool mask."""

    old: torch.Tensor
    ref: torch.Tensor
    adv: torch.Tensor
    w: torch.Tensor
    valid: torch.Tensor


def _kept_tokens(valid: torch.Tensor, token_chunk: int) -> torch.Tensor | None:
    """Indices of the valid tokens of a flat mask; None when all of them (or none) are, or
    when a token chunk is over an eighth of the tokens: a chunk gathers its rows and their
    gradient into two ``(token_chunk, H)`` copies, which must stay small next to the chunk
    loops' own buffers (the CPU rule's vocabulary slices take all tokens in one chunk)."""
    if token_chunk * 8 > valid.numel():
        return None
    kept = valid.nonzero().squeeze(1)
    return kept if 0 < kept.numel() < valid.numel() else None


class _FusedLinearGRPOLoss(torch.autograd.Function):
    """Loss and (when ``want_grads``) its gradients in one chunked pass over the tokens.

    ``grad_scale`` (``"main_grad"`` mode only, else None): the gradient backward will bring;
    the weight's gradient times it goes into ``main_grad`` during forward, and backward checks
    that it came."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        targets,
        tokens: _Tokens,
        head: Head,
        group,
        options,
        want_grads,
        grad_scale,
        kept,
    ):
        # kept: the rows of hidden and targets the loss reads (None: all); tokens has one
        # entry per kept row. A chunk gathers its rows; the others get a zero gradient.
        n = hidden.shape[0] if kept is None else kept.numel()
        logp = hidden.new_empty(n, dtype=torch.float32)
        loss = logp.new_zeros(())
        grad_h = None
        if want_grads:  # the rows the loss skips keep a zero gradient
            grad_h = torch.empty_like(hidden) if kept is None else torch.zeros_like(hidden)

        def rows_of(s: int, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            """The chunk's hidden rows, targets and the gradient rows to write (a view, or a
            buffer that ``store_grad`` scatters)."""
            if kept is None:
                return hidden[s:e], targets[s:e], None if grad_h is None else grad_h[s:e]
            idx = kept[s:e]
            buf = None if grad_h is None else hidden.new_empty(e - s, hidden.shape[1])
            return hidden.index_select(0, idx), targets[idx], buf

        def store_grad(s: int, e: int, chunk_grad: torch.Tensor | None) -> None:
            if kept is not None and chunk_grad is not None:
                grad_h.index_copy_(0, kept[s:e], chunk_grad)

        grad_w = grad_weight_accumulator(weight, head) if want_grads else None
        scale = 1.0 if grad_scale is None else float(grad_scale)

        def token_grads(s: int, e: int, lp: torch.Tensor) -> torch.Tensor | None:
            """Add the chunk's loss; return its gradient in the log-probs (times ``scale``),
            None when no gradient is wanted."""
            nonlocal loss
            old, ref, adv, w, valid = (x[s:e] for x in tokens)
            terms = grpo_token_terms(lp, old, ref, adv, options, with_grad=want_grads)
            # Masked tokens may hold non-finite terms; their weight is 0 but 0*inf is not.
            loss += torch.where(valid, w * terms.loss, 0.0).sum()
            if not want_grads:
                return None
            g = torch.where(valid, w * terms.grad, 0.0).float()
            return g * scale if scale != 1.0 else g

        if want_grads and head.one_pass:
            rows = head.token_chunk
            buffer = hidden.new_empty(min(rows, n) * weight.shape[0])
            for s in range(0, n, rows):
                e = min(s + rows, n)
                h, tg, gh = rows_of(s, e)
                exp, lse, tgt, softmax_scale = one_pass_stats(head, h, weight, tg, buffer, group)
                logp[s:e] = tgt - lse
                g = token_grads(s, e, logp[s:e])
                one_pass_grads(
                    head, exp, softmax_scale, h, weight, tg, g, grad_hidden=gh, grad_weight=grad_w
                )
                store_grad(s, e, gh)
                del exp, h, gh  # before the next chunk gathers its rows
            del buffer
        else:
            buffers = chunk_buffers(head, hidden, n, weight.shape[0])
            for s in range(0, n, head.token_chunk):
                e = min(s + head.token_chunk, n)
                h, tg, gh = rows_of(s, e)
                stats, last = chunk_stats(
                    head, h, weight, tg, keep_last=want_grads, buffers=buffers
                )
                lse, tgt, px = combine_stats(*stats, group)
                logp[s:e] = tgt - lse
                g = token_grads(s, e, logp[s:e])
                if want_grads:
                    chunk_grads(
                        head,
                        h,
                        weight,
                        tg,
                        lse,
                        px,
                        g,
                        None,
                        grad_hidden=gh,
                        grad_weight=grad_w,
                        last_logits=last,
                        buffers=buffers,
                    )
                    store_grad(s, e, gh)
                del last, h, gh
            del buffers
        ctx.grad_scale = grad_scale
        if want_grads:
            all_reduce_sum_(grad_h, group)
            if grad_scale is None:
                # Round once here and drop the fp32 buffer, rather than hold it until backward.
                grad_w = grad_weight_result(grad_w, weight, head)
            else:  # it is main_grad: backward hands megatron's hook what it expects
                ctx.head = head
                ctx.save_for_backward(weight)
                grad_w = None
        ctx.grads = (grad_h, grad_w)
        ctx.mark_non_differentiable(logp)
        return loss, logp

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp):
        grad_h, grad_w = ctx.grads
        if grad_h is None:
            raise RuntimeError(
                "fused_linear_grpo_loss: gradients were not computed in forward "
                "(it ran with grad mode off or with inputs that did not require grad, "
                "or this is a second backward through the same graph)"
            )
        # The stored grads are scaled in place (no second copy of grad_weight); a second
        # backward through the same graph would scale them again, so forbid it.
        ctx.grads = (None, None)
        if ctx.grad_scale is not None:
            got = float(grad_loss)
            if not math.isclose(got, ctx.grad_scale, rel_tol=1e-5, abs_tol=1e-30):
                raise RuntimeError(
                    f"fused_linear_grpo_loss: called with grad_scale={ctx.grad_scale}, so the "
                    f"weight's gradient times that went into weight.main_grad during forward, "
                    f"but backward received a gradient of {got} for the loss"
                )
            (weight,) = ctx.saved_tensors
            grad_w = grad_weight_result(weight.main_grad, weight, ctx.head)
            return grad_h, grad_w, None, None, None, None, None, None, None, None
        g = grad_loss.to(grad_h.dtype)
        grad_h.mul_(g)
        grad_w.mul_(g)
        return grad_h, grad_w, None, None, None, None, None, None, None, None


def fused_linear_grpo_loss_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    **grpo_kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Materialised reference: ``grpo_loss_ref`` of ``logprobs_from_logits_ref(hidden @ W.T)``.

    ``grpo_kwargs`` are ``grpo_loss_ref``'s keyword arguments (advantages, rewards, options or
    its fields).
    """
    b, t, h = hidden.shape
    logp = fused_linear_logprobs_ref(
        hidden.reshape(b * t, h), weight, targets.reshape(-1), temperature=temperature
    ).reshape(b, t)
    return grpo_loss_ref(logp, old_logp, ref_logp, mask, **grpo_kwargs)


def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    options: GRPOLossOptions | None = None,
    head: HeadOptions | None = None,
    tp_group: dist.ProcessGroup | None = None,
    impl: str = "auto",
    grad_scale: float | None = None,
    **option_keywords: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss straight from the last hidden states; ``(B, T, V)`` logits never exist.

    Equals ``grpo_loss(logprobs_from_logits(hidden @ weight.T / T), ...)`` in value, metrics
    and gradients (see ``grpo_loss`` for the loss, ``loss_agg`` and the advantages options).

    Args:
        hidden: ``(B, T, H)`` fp32/bf16/fp16, the input of the lm_head (replicated across
            ``tp_group``; its gradient is all-reduced, see ``tensor_parallel``).
        weight: ``(V_local, H)`` lm_head (shard), same dtype.
        targets: ``(B, T)`` integer global ids; old_logp, ref_logp: ``(B, T)`` floats (no grad);
            mask: ``(B, T)`` bool or 0/1.
        advantages / rewards: the advantage source (exactly one; rewards need
            ``options.group_size``).
        options: the loss's ``GRPOLossOptions``; head: the lm_head's ``HeadOptions``
            (temperature, chunk sizes, ``grad_weight_accum``, as in ``fused_linear_logprobs``).
            Instead of either object, its fields can be given as keywords
            (``beta=0.0, temperature=0.7, token_chunk=256, ...``).
        grad_scale: for a weight whose gradient is summed into ``main_grad``: the gradient
            that backward will bring for the loss (1.0 for ``loss.backward()``, ``c`` for
            ``(c * loss).backward()``). Given, the gradients are computed during this call as
            in the other modes (6NHV rather than 8NHV) and ``grad_scale`` times the weight's
            goes into ``main_grad`` at once; backward then raises RuntimeError if it receives
            another gradient (relative tolerance 1e-5). Only call it so when backward follows.
            Ignored in the other modes.

    Returns:
        ``(loss, metrics)``: 0-d fp32 loss and the ``grpo_metrics`` dict (0-d fp32 tensors).
        When grad mode is on and ``hidden`` or ``weight`` requires grad, both gradients are
        computed during this call (6NHV FLOPs in all without vocabulary chunks, up to 8NHV
        with them; 6NHV on the CPU in fp32, whose chunks are token rows over the whole
        vocabulary) and ``backward`` only scales them; in ``"main_grad"`` mode without
        ``grad_scale`` they are computed in ``backward`` (8NHV), the weight's straight into
        ``weight.main_grad``.
    """
    loss_keywords, head_keywords = split_keywords(option_keywords, GRPOLossOptions, HeadOptions)
    options = from_keywords(GRPOLossOptions, options, loss_keywords, name="options")
    head = from_keywords(HeadOptions, head, head_keywords, name="head")
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    main_grad = sums_into_main_grad(head.grad_weight_accum, weight)
    eager = want_grads and (grad_scale is not None or not main_grad)  # gradients in forward
    plan = resolve_head(
        hidden, weight, targets, head, hidden_dims=3, tp_group=tp_group, impl=impl, one_pass=eager
    )
    b, t, h = hidden.shape
    n = b * t
    check_same_device(hidden=hidden, old_logp=old_logp)
    check_shape("old_logp", old_logp, (b, t))
    x = GRPOInputs(None, old_logp, ref_logp, mask, advantages, rewards)
    check_grpo_inputs(x, options)
    if want_grads and main_grad and grad_scale is None:
        logp, _ = FusedLinearLogprobs.apply(
            hidden.reshape(n, h), weight, targets.reshape(n).contiguous(), tp_group, plan
        )
        return grpo_loss_checked(x._replace(logp=logp.view(b, t)), options, impl)
    valid, adv, w = grpo_token_inputs(x, options)
    old, ref, adv = old_logp.detach().float(), ref_logp.detach().float(), adv.float()
    tokens = _Tokens(*(x.reshape(n) for x in (old, ref, adv, w, valid)))
    # Masked tokens (prompts, padding) add nothing to the loss or its gradients: the head
    # runs on the others alone, and the masked rows of hidden get a zero gradient.
    kept = _kept_tokens(tokens.valid, plan.token_chunk)
    if kept is not None:
        tokens = _Tokens(*(x[kept] for x in tokens))
    loss, logp = _FusedLinearGRPOLoss.apply(
        hidden.reshape(n, h),
        weight,
        targets.reshape(n).contiguous(),
        tokens,
        plan,
        tp_group,
        options,
        want_grads,
        float(grad_scale) if want_grads and main_grad else None,
        kept,
    )
    if kept is not None:  # a masked token keeps old's log-prob: a ratio of 1, outside the loss
        logp = old.reshape(n).index_copy(0, kept, logp)
    logp = logp.view(b, t)
    with torch.no_grad():
        terms = grpo_token_terms(logp, old, ref, adv, options)
        metrics = grpo_metrics(
            valid,
            terms.ratio,
            adv,
            terms.k3,
            terms.loss,
            clip_eps_low=options.clip_eps_low,
            clip_eps_high=options.clip_eps_high,
        )
    return loss, metrics
