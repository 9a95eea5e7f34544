"""lm_head matmul fused with log-softmax/gather (and the GRPO loss): logits never exist in full.

Both ops walk the tokens in chunks. A chunk's logits ``(C, V_local)`` come from one cuBLAS
matmul in the input dtype, the row statistics from the Triton kernel (``_logsoftmax``), and the
logits gradient is written over the chunk's logits buffer in place before the two grad matmuls.

Chunk rule (``default_chunk_size``): ``C`` is the largest power of two with
``C·V_local <= N·H`` (a chunk's logits are never larger than ``hidden``), at least 32 rows (a
matmul narrower than that wastes the tensor cores) and at most ``N``. At DeepSeekMath-7B's head
(H=4096, V=102,400) and N=8192 that is 256 rows: 52 MB of bf16 logits instead of 3.4 GB of fp32.

Extra memory: O(N) fp32 row statistics plus one chunk of logits. Vocabulary sharding across
ranks is the tensor-parallel path (``tensor_parallel``); a single shard is never split further.

FLOPs: ``fused_linear_logprobs`` costs 2NHV forward and recomputes the logits in backward
(2NHV + 4NHV). ``fused_linear_grpo_loss`` knows each token's ``dloss/dlogp`` as soon as its
chunk's log-probs are known, so when gradients are needed it computes them in the forward
chunk loop (6NHV in total) and backward only scales them by the incoming gradient.

Precision: chunk logits are the matmul's output in the input dtype (as a materialised bf16
lm_head would give); all softmax/loss math is fp32; ``grad_weight`` is accumulated over chunks
with ``addmm_`` in the weight's dtype (cuBLAS accumulates each chunk in fp32), so no fp32 copy
of the ``(V_local, H)`` gradient is ever held.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import library
from ._dispatch import check_same_device, check_shape, resolve_impl
from .grpo_common import (
    check_grpo_inputs,
    grpo_metrics,
    grpo_token_advantages,
    grpo_token_loss_and_grad,
    grpo_token_weights,
)
from .grpo_loss import grpo_loss_ref
from .kl import kl_k3_ref
from .logprobs import (
    LOGIT_DTYPES,
    check_targets,
    check_temperature,
    logprobs_from_logits_ref,
)
from .tensor_parallel import all_reduce_sum_, combine_stats, shard_info

MIN_CHUNK = 32


def default_chunk_size(n: int, h: int, v_local: int) -> int:
    """Token rows per chunk: see the module docstring for the rule."""
    budget = max(1, (n * h) // max(v_local, 1))
    c = 1 << (budget.bit_length() - 1)
    return max(1, min(n, max(MIN_CHUNK, c)))


def _check_linear(hidden: torch.Tensor, weight: torch.Tensor) -> None:
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
    check_same_device(hidden=hidden, weight=weight)


def _chunk_size(chunk_size: int | None, n: int, h: int, v_local: int) -> int:
    if chunk_size is None:
        return default_chunk_size(n, h, v_local)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, group, backend, chunk):
        n = hidden.shape[0]
        vocab_start, _ = shard_info(weight.shape[0], group)
        lse = hidden.new_empty(n, dtype=torch.float32)
        tgt, px = torch.empty_like(lse), torch.empty_like(lse)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = hidden[s:e] @ weight.T
            stats = backend.stats(logits, targets[s:e], vocab_start, inv_temp)
            lse[s:e], tgt[s:e], px[s:e] = combine_stats(*stats, group)
            del logits
        ctx.save_for_backward(hidden, weight, targets, lse, px)
        ctx.inv_temp, ctx.group, ctx.backend, ctx.chunk = inv_temp, group, backend, chunk
        ctx.vocab_start = vocab_start
        return tgt - lse, lse - px

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, targets, lse, px = ctx.saved_tensors
        n = hidden.shape[0]
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        for s in range(0, n, ctx.chunk):
            e = min(s + ctx.chunk, n)
            logits = hidden[s:e] @ weight.T
            g_ent = None if grad_ent is None else grad_ent[s:e]
            dlogits = ctx.backend.grad(
                logits,
                targets[s:e],
                lse[s:e],
                px[s:e],
                grad_logp[s:e],
                g_ent,
                None,
                ctx.vocab_start,
                ctx.inv_temp,
                True,
            )
            if need_h:
                torch.matmul(dlogits, weight, out=grad_h[s:e])
            if need_w:
                grad_w.addmm_(dlogits.T, hidden[s:e])
            del logits, dlogits
        if need_h:
            all_reduce_sum_(grad_h, ctx.group)
        return grad_h, grad_w, None, None, None, None, None


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
    chunk_size: int | None = None,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, chunked.

    Args:
        hidden: ``(N, H)`` fp32/bf16/fp16 (replicated on every rank with ``tp_group``).
        weight: ``(V_local, H)``, same dtype: the lm_head (this rank's vocabulary shard).
        targets: ``(N,)`` integer global ids in ``[0, V_local·world)``.
        chunk_size: token rows per chunk (default: ``default_chunk_size``).
        impl: ``"auto"``/``"triton"``/``"torch"``: which log-softmax primitives run on each
            chunk (``torch`` is the same chunked algorithm in plain PyTorch).

    Returns:
        fp32 ``(N,)`` log-probs (and ``(N,)`` entropy when ``return_entropy``); gradients flow
        to ``hidden`` (all-reduced over ``tp_group``) and ``weight``. Never builds ``(N, V)``.
    """
    path = resolve_impl(impl, hidden)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D (N, H), got shape {tuple(hidden.shape)}")
    _check_linear(hidden, weight)
    check_same_device(hidden=hidden, targets=targets)
    inv_temp = check_temperature(temperature)
    n, h = hidden.shape
    v_local = weight.shape[0]
    check_targets(targets, n, shard_info(v_local, tp_group)[1])
    chunk = _chunk_size(chunk_size, n, h, v_local)
    logp, ent = _FusedLinearLogprobs.apply(
        hidden,
        weight,
        targets.contiguous(),
        inv_temp,
        tp_group,
        library.get_backend(path),
        chunk,
    )
    return (logp, ent) if return_entropy else logp


class _FusedLinearGRPOLoss(torch.autograd.Function):
    """Loss and (when ``want_grads``) its gradients in one chunked pass over the tokens."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, old, ref, adv, w, valid, opts):
        inv_temp, group, backend, chunk, want_grads, eps_lo, eps_hi, beta = opts
        n = hidden.shape[0]
        vocab_start, _ = shard_info(weight.shape[0], group)
        logp = hidden.new_empty(n, dtype=torch.float32)
        terms = torch.empty_like(logp)
        loss = logp.new_zeros(())
        grad_h = torch.empty_like(hidden) if want_grads else None
        grad_w = torch.zeros_like(weight) if want_grads else None
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = hidden[s:e] @ weight.T
            lse, tgt, px = combine_stats(
                *backend.stats(logits, targets[s:e], vocab_start, inv_temp), group
            )
            logp[s:e] = tgt - lse
            t_c, dl = grpo_token_loss_and_grad(
                logp[s:e],
                old[s:e],
                ref[s:e],
                adv[s:e],
                clip_eps_low=eps_lo,
                clip_eps_high=eps_hi,
                beta=beta,
            )
            terms[s:e] = t_c
            # Masked tokens may hold non-finite terms; their weight is 0 but 0*inf is not.
            loss += torch.where(valid[s:e], w[s:e] * t_c, 0.0).sum()
            if want_grads:
                g = torch.where(valid[s:e], w[s:e] * dl, 0.0).float()
                dlogits = backend.grad(
                    logits, targets[s:e], lse, px, g, None, None, vocab_start, inv_temp, True
                )
                torch.matmul(dlogits, weight, out=grad_h[s:e])
                grad_w.addmm_(dlogits.T, hidden[s:e])
                del dlogits
            del logits
        if want_grads:
            all_reduce_sum_(grad_h, group)
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
    chunk_size: int | None = None,
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

    Returns:
        ``(loss, metrics)``: 0-d fp32 loss and the ``grpo_metrics`` dict (0-d fp32 tensors).
        When grad mode is on and ``hidden`` or ``weight`` requires grad, both gradients are
        computed during this call (6NHV FLOPs in all) and ``backward`` only scales them.
    """
    path = resolve_impl(impl, hidden)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be 3-D (B, T, H), got shape {tuple(hidden.shape)}")
    _check_linear(hidden, weight)
    b, t, h = hidden.shape
    check_same_device(hidden=hidden, targets=targets, old_logp=old_logp)
    check_shape("targets", targets, (b, t))
    check_shape("old_logp", old_logp, (b, t))
    check_grpo_inputs(
        old_logp,
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
    inv_temp = check_temperature(temperature)
    n, v_local = b * t, weight.shape[0]
    flat_targets = targets.reshape(n).contiguous()
    check_targets(flat_targets, n, shard_info(v_local, tp_group)[1], name="targets")
    chunk = _chunk_size(chunk_size, n, h, v_local)

    valid = mask if mask.dtype == torch.bool else mask != 0
    adv = grpo_token_advantages(mask, advantages=advantages, rewards=rewards, group_size=group_size)
    w = grpo_token_weights(mask, loss_agg, max_len=max_len)
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    opts = (
        inv_temp,
        tp_group,
        library.get_backend(path),
        chunk,
        want_grads,
        float(clip_eps_low),
        float(clip_eps_high),
        float(beta),
    )
    loss, logp, terms = _FusedLinearGRPOLoss.apply(
        hidden.reshape(n, h),
        weight,
        flat_targets,
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
