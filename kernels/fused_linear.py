"""lm_head matmul fused with log-softmax/gather (and the GRPO loss): logits never exist in full.

Both ops walk the tokens in chunks of ``token_chunk`` rows and, when one token chunk over the
whole local vocabulary would exceed the memory budget, the vocabulary in chunks of
``vocab_chunk`` rows of ``weight`` (``_head_chunks``: the rule, the loops and the online
log-sum-exp merge). A chunk's logits come from one cuBLAS matmul in the input dtype, the row
statistics from the Triton kernel (``_logsoftmax``), and the logits gradient is written over the
chunk's logits buffer in place before the two grad matmuls.

Extra memory: O(N) fp32 row statistics, one ``(token_chunk, vocab_chunk)`` logits buffer and,
with vocabulary chunks and low-precision inputs, a ``(token_chunk, H)`` fp32 accumulator for
the hidden gradient; with ``grad_weight_accum`` resolving to ``"fp32"`` (below), an fp32
``(V_local, H)`` accumulator for the weight gradient. Vocabulary sharding across ranks is the
tensor-parallel path (``tensor_parallel``); vocabulary chunks are slices inside this rank's
shard.

FLOPs: ``fused_linear_logprobs`` costs 2NHV forward and recomputes the logits in backward
(2NHV + 4NHV), with or without vocabulary chunks. ``fused_linear_grpo_loss`` knows each token's
``dloss/dlogp`` as soon as its chunk's log-probs are known, so when gradients are needed it
computes them in the forward chunk loop: 6NHV in total over the full vocabulary; with ``K``
vocabulary chunks the gradient pass recomputes ``K - 1`` of them (up to 8NHV).

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
* ``"auto"`` (default): ``"fp32"`` when the weight is bf16/fp16 and there is more than one
  token chunk, ``"param"`` otherwise (an fp32 weight, or a single chunk, rounds once anyway).

Memory against the issue's target (peak beyond inputs and gradients < 5% of the materialised
fp32 logits ``N·V·4``): the fp32 accumulator is ``V·H·4`` bytes, i.e. ``H/N`` of those logits:
100% at H=4096, N=4096; 50% at N=8192; 25% at N=16384 (V=102,400). Only ``"param"`` meets the
target; ``"auto"`` trades it for PyTorch-level ``grad_weight`` accuracy in low precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from . import library
from ._dispatch import check_same_device, check_shape, resolve_impl
from ._head_chunks import (
    GRAD_WEIGHT_ACCUM,
    GradWeightAccum,
    chunk_grads,
    chunk_stats,
    default_chunk_sizes,
    resolve_chunk_sizes,
    resolve_grad_weight_accum,
)
from .grpo_common import (
    check_grpo_inputs,
    grpo_metrics,
    grpo_token_inputs,
    grpo_token_loss_and_grad,
)
from .grpo_loss import grpo_loss_ref
from .kl import kl_k3_ref
from .library import Backend
from .logprobs import (
    LOGIT_DTYPES,
    check_targets,
    check_temperature,
    logprobs_from_logits_ref,
)
from .tensor_parallel import all_reduce_sum_, combine_stats, shard_info

__all__ = [
    "GRAD_WEIGHT_ACCUM",
    "default_chunk_sizes",
    "fused_linear_grpo_loss",
    "fused_linear_grpo_loss_ref",
    "fused_linear_logprobs",
    "fused_linear_logprobs_ref",
]


class _Head(NamedTuple):
    """What both fused ops need once their head arguments are checked."""

    backend: Backend
    inv_temp: float
    vocab_start: int
    token_chunk: int
    vocab_chunk: int
    fp32_grad_weight: bool  # accumulate grad_weight in an fp32 buffer (see grad_weight_accum)


def _grad_weight_buffer(weight: torch.Tensor, head: _Head) -> torch.Tensor:
    dtype = torch.float32 if head.fp32_grad_weight else weight.dtype
    return torch.zeros(weight.shape, dtype=dtype, device=weight.device)


def _check_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    hidden_dims: int,
    temperature: float,
    tp_group: dist.ProcessGroup | None,
    token_chunk: int | None,
    vocab_chunk: int | None,
    grad_weight_accum: str,
    impl: str,
) -> _Head:
    """The argument checks shared by both fused ops; ValueError names the argument.

    ``hidden`` is ``(N, H)`` (``hidden_dims=2``) or ``(B, T, H)`` (3); ``targets`` has its
    leading shape.
    """
    path = resolve_impl(impl, hidden)
    if hidden.dim() != hidden_dims:
        want = "(N, H)" if hidden_dims == 2 else "(B, T, H)"
        raise ValueError(f"hidden must be {hidden_dims}-D {want}, got shape {tuple(hidden.shape)}")
    if hidden.dtype not in LOGIT_DTYPES:
        raise ValueError(f"hidden must have dtype in {LOGIT_DTYPES}, got {hidden.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (V_local, H), got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one vocabulary row")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden's last dim {hidden.shape[-1]} must equal weight's dim 1 {weight.shape[1]}"
        )
    check_same_device(hidden=hidden, weight=weight, targets=targets)
    check_shape("targets", targets, tuple(hidden.shape[:-1]))
    inv_temp = check_temperature(temperature)
    n, h, v_local = hidden.shape[:-1].numel(), hidden.shape[-1], weight.shape[0]
    vocab_start, v_global = shard_info(v_local, tp_group)
    check_targets(targets.reshape(n), n, v_global, name="targets")
    tc, vc = resolve_chunk_sizes(n, h, v_local, token_chunk, vocab_chunk)
    fp32_gw = resolve_grad_weight_accum(grad_weight_accum, weight.dtype, n, tc)
    return _Head(library.get_backend(path), inv_temp, vocab_start, tc, vc, fp32_gw)


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, group, head: _Head):
        n = hidden.shape[0]
        lse = hidden.new_empty(n, dtype=torch.float32)
        tgt, px = torch.empty_like(lse), torch.empty_like(lse)
        for s in range(0, n, head.token_chunk):
            e = min(s + head.token_chunk, n)
            stats, _ = chunk_stats(
                head.backend,
                hidden[s:e],
                weight,
                targets[s:e],
                head.vocab_start,
                head.inv_temp,
                head.vocab_chunk,
            )
            lse[s:e], tgt[s:e], px[s:e] = combine_stats(*stats, group)
        ctx.save_for_backward(hidden, weight, targets, lse, px)
        ctx.group, ctx.head = group, head
        return tgt - lse, lse - px

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, targets, lse, px = ctx.saved_tensors
        head: _Head = ctx.head
        n = hidden.shape[0]
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = _grad_weight_buffer(weight, head) if need_w else None
        for s in range(0, n, head.token_chunk):
            e = min(s + head.token_chunk, n)
            chunk_grads(
                head.backend,
                hidden[s:e],
                weight,
                targets[s:e],
                lse[s:e],
                px[s:e],
                grad_logp[s:e],
                None if grad_ent is None else grad_ent[s:e],
                head.vocab_start,
                head.inv_temp,
                head.vocab_chunk,
                grad_hidden=grad_h[s:e] if need_h else None,
                grad_weight=grad_w,
            )
        if need_h:
            all_reduce_sum_(grad_h, ctx.group)
        if need_w and grad_w.dtype != weight.dtype:
            grad_w = grad_w.to(weight.dtype)  # the one rounding of the fp32 accumulator
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
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
    grad_weight_accum: GradWeightAccum = "auto",
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, chunked.

    Args:
        hidden: ``(N, H)`` fp32/bf16/fp16 (replicated on every rank with ``tp_group``).
        weight: ``(V_local, H)``, same dtype: the lm_head (this rank's vocabulary shard).
        targets: ``(N,)`` integer global ids in ``[0, V_local·world)``.
        token_chunk, vocab_chunk: token rows and vocabulary rows (of ``weight``) per chunk;
            ``None`` picks them by the memory budget (``default_chunk_sizes``; a missing one
            is filled from the budget). ``vocab_chunk >= V_local`` disables vocabulary chunks.
        grad_weight_accum: ``"fp32"`` sums ``grad_weight`` over token chunks in an fp32
            ``(V_local, H)`` buffer during backward (``V_local·H·4`` extra bytes; rounded once,
            as plain PyTorch), ``"param"`` in the weight's dtype (no extra memory, one rounding
            per token chunk), ``"auto"``: ``"fp32"`` for a bf16/fp16 weight with more than one
            token chunk, else ``"param"``. See the module docstring.
        impl: ``"auto"``/``"triton"``/``"torch"``: which log-softmax primitives run on each
            chunk (``torch`` is the same chunked algorithm in plain PyTorch).

    Returns:
        fp32 ``(N,)`` log-probs (and ``(N,)`` entropy when ``return_entropy``); gradients flow
        to ``hidden`` (all-reduced over ``tp_group``) and ``weight``. Never builds ``(N, V)``:
        the temporaries are one ``(token_chunk, vocab_chunk)`` logits buffer and, in
        ``"fp32"`` mode, the ``(V_local, H)`` fp32 grad_weight accumulator.
    """
    head = _check_head(
        hidden,
        weight,
        targets,
        hidden_dims=2,
        temperature=temperature,
        tp_group=tp_group,
        token_chunk=token_chunk,
        vocab_chunk=vocab_chunk,
        grad_weight_accum=grad_weight_accum,
        impl=impl,
    )
    logp, ent = _FusedLinearLogprobs.apply(hidden, weight, targets.contiguous(), tp_group, head)
    return (logp, ent) if return_entropy else logp


class _GRPOOpts(NamedTuple):
    head: _Head
    group: dist.ProcessGroup | None
    want_grads: bool
    clip_eps_low: float
    clip_eps_high: float
    beta: float


class _FusedLinearGRPOLoss(torch.autograd.Function):
    """Loss and (when ``want_grads``) its gradients in one chunked pass over the tokens."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, old, ref, adv, w, valid, opts: _GRPOOpts):
        head, group = opts.head, opts.group
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)
        terms = torch.empty_like(logp)
        loss = logp.new_zeros(())
        grad_h = torch.empty_like(hidden) if opts.want_grads else None
        grad_w = _grad_weight_buffer(weight, head) if opts.want_grads else None
        for s in range(0, n, head.token_chunk):
            e = min(s + head.token_chunk, n)
            stats, kept = chunk_stats(
                head.backend,
                hidden[s:e],
                weight,
                targets[s:e],
                head.vocab_start,
                head.inv_temp,
                head.vocab_chunk,
                keep_last=opts.want_grads,
            )
            lse, tgt, px = combine_stats(*stats, group)
            logp[s:e] = tgt - lse
            t_c, dl = grpo_token_loss_and_grad(
                logp[s:e],
                old[s:e],
                ref[s:e],
                adv[s:e],
                clip_eps_low=opts.clip_eps_low,
                clip_eps_high=opts.clip_eps_high,
                beta=opts.beta,
            )
            terms[s:e] = t_c
            # Masked tokens may hold non-finite terms; their weight is 0 but 0*inf is not.
            loss += torch.where(valid[s:e], w[s:e] * t_c, 0.0).sum()
            if opts.want_grads:
                g = torch.where(valid[s:e], w[s:e] * dl, 0.0).float()
                chunk_grads(
                    head.backend,
                    hidden[s:e],
                    weight,
                    targets[s:e],
                    lse,
                    px,
                    g,
                    None,
                    head.vocab_start,
                    head.inv_temp,
                    head.vocab_chunk,
                    grad_hidden=grad_h[s:e],
                    grad_weight=grad_w,
                    last_logits=kept,
                )
            del kept
        if opts.want_grads:
            all_reduce_sum_(grad_h, group)
            if grad_w.dtype != weight.dtype:
                # Round once here and drop the fp32 buffer, rather than hold it until backward.
                grad_w = grad_w.to(weight.dtype)
        ctx.grads = (grad_h, grad_w)
        ctx.mark_non_differentiable(logp, terms)
        return loss, logp, terms

    @staticmethod
    def backward(ctx, grad_loss, _glogp, _gterms):
        grad_h, grad_w = ctx.grads
        if grad_h is None and grad_w is None:
            raise RuntimeError(
                "fused_linear_grpo_loss: gradients were not computed in forward "
                "(it ran with grad mode off or with inputs that did not require grad)"
            )
        # The stored grads are scaled in place (no second copy of grad_weight); a second
        # backward through the same graph would scale them again, so forbid it.
        ctx.grads = (None, None)
        g = grad_loss.to(grad_h.dtype)
        grad_h.mul_(g)
        grad_w.mul_(g)
        return grad_h, grad_w, None, None, None, None, None, None, None


def fused_linear_grpo_loss_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    **grpo_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Materialised reference: ``grpo_loss_ref`` of ``logprobs_from_logits_ref(hidden @ W.T)``.

    ``grpo_kwargs`` are ``grpo_loss_ref``'s keyword arguments (advantages, rewards, ...).
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
    group_size: int | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.04,
    loss_agg: str = "seq-mean-token-mean",
    max_len: int | None = None,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
    grad_weight_accum: GradWeightAccum = "auto",
    impl: str = "auto",
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
        advantages / rewards + group_size: the advantage source (exactly one).
        token_chunk, vocab_chunk: chunk sizes over the ``N = B·T`` tokens and the vocabulary
            rows of ``weight`` (default: ``default_chunk_sizes``, the memory-budget rule).
        grad_weight_accum: where ``grad_weight`` is summed over token chunks, as in
            ``fused_linear_logprobs``; with ``"fp32"`` the ``V_local·H·4``-byte buffer lives
            during this call (gradients are computed here) and is rounded once at its end.

    Returns:
        ``(loss, metrics)``: 0-d fp32 loss and the ``grpo_metrics`` dict (0-d fp32 tensors).
        When grad mode is on and ``hidden`` or ``weight`` requires grad, both gradients are
        computed during this call (6NHV FLOPs in all without vocabulary chunks, up to 8NHV
        with them) and ``backward`` only scales them.
    """
    head = _check_head(
        hidden,
        weight,
        targets,
        hidden_dims=3,
        temperature=temperature,
        tp_group=tp_group,
        token_chunk=token_chunk,
        vocab_chunk=vocab_chunk,
        grad_weight_accum=grad_weight_accum,
        impl=impl,
    )
    b, t, h = hidden.shape
    check_same_device(hidden=hidden, old_logp=old_logp)
    check_shape("old_logp", old_logp, (b, t))
    check_grpo_inputs(
        None,
        old_logp,
        ref_logp,
        mask,
        advantages=advantages,
        rewards=rewards,
        group_size=group_size,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        loss_agg=loss_agg,
        max_len=max_len,
    )
    n = b * t
    valid, adv, w = grpo_token_inputs(
        mask,
        advantages=advantages,
        rewards=rewards,
        group_size=group_size,
        loss_agg=loss_agg,
        max_len=max_len,
    )
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    opts = _GRPOOpts(
        head, tp_group, want_grads, float(clip_eps_low), float(clip_eps_high), float(beta)
    )
    loss, logp, terms = _FusedLinearGRPOLoss.apply(
        hidden.reshape(n, h),
        weight,
        targets.reshape(n).contiguous(),
        old_logp.detach().float().reshape(n),
        ref_logp.detach().float().reshape(n),
        adv.float().reshape(n),
        w.reshape(n),
        valid.reshape(n),
        opts,
    )
    with torch.no_grad():
        logp = logp.reshape(b, t)
        old, ref = old_logp.detach().float(), ref_logp.detach().float()
        metrics = grpo_metrics(
            valid,
            torch.exp(logp - old),
            adv.float(),
            kl_k3_ref(logp, ref),
            terms.reshape(b, t),
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
        )
    return loss, metrics
