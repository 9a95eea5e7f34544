"""Vocabulary-parallel log-probs: a thin layer over the single-device primitives.

Convention (the lm_head is column-parallel over the vocabulary, as in Megatron):

* rank ``r`` of ``tp_group`` holds the contiguous shard ``[r·V_local, (r+1)·V_local)`` of the
  vocabulary: its ``logits (N, V_local)`` or its ``weight (V_local, H)``; every shard has the
  same ``V_local``; ``targets`` hold global ids and are the same on every rank.
* Forward exchanges only O(N) floats: each rank computes ``(lse, tgt, px)`` over its shard and
  one all-gather of that ``(3, N)`` block lets every rank form the global log-sum-exp, target
  logit and ``Σ p·z`` locally (so all ranks return identical log-probs/entropies).
* Backward needs no communication for the logits: with the global ``lse``/``px`` each shard
  computes its own slice of ``a·(onehot − p) − c·p·(z − px)``; a rank that does not own a
  token's target only gets the softmax terms.
* For the fused linear ops the input ``hidden`` is replicated on every rank; each rank's
  gradient for it is a partial sum over its vocabulary shard, and the ops all-reduce it before
  returning (what Megatron's ``copy_to_tensor_model_parallel_region`` does for a
  column-parallel linear). So ``hidden.grad`` is the full gradient on every rank, equal to the
  TP=1 result; do not all-reduce it again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .library import Backend


def shard_info(v_local: int, group: dist.ProcessGroup | None) -> tuple[int, int]:
    """``(vocab_start, V_global)`` of this rank's contiguous shard of width ``v_local``."""
    if group is None:
        return 0, v_local
    return dist.get_rank(group) * v_local, dist.get_world_size(group) * v_local


def merge_partial_stats(
    lse: torch.Tensor, tgt: torch.Tensor, px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge ``K`` partial ``(lse, tgt, px)`` over disjoint vocabulary slices into one.

    Inputs are fp32 ``(K, N)``: row ``k`` holds the statistics of slice ``k`` alone (as
    ``backend.stats`` returns them). The same algebra serves tensor-parallel shards and the
    vocabulary chunks inside one shard: ``lse = logsumexp_k lse_k``, ``tgt = Σ_k tgt_k`` (only
    the slice owning the target is non-zero) and ``px = Σ_k exp(lse_k − lse)·px_k`` (slice
    ``k``'s softmax is the global one scaled by ``exp(lse − lse_k)``). Returns ``(N,)`` each.
    """
    lse_g = torch.logsumexp(lse, dim=0)
    # Weighted relative to lse_g: the weights' rounding then scales px_k − lse (≈ 0 for a
    # peaked row) instead of px_k itself (|z|-sized), which cost ~5 ulps of |z| in px.
    px_g = lse_g + (torch.exp(lse - lse_g) * (px - lse_g)).sum(0)
    return lse_g, tgt.sum(0), px_g


def combine_stats(
    lse: torch.Tensor, tgt: torch.Tensor, px: torch.Tensor, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-shard ``(lse, tgt, px)`` (fp32 ``(N,)`` each) into the global ones.

    One all-gather of ``3·N`` floats per rank, then ``merge_partial_stats`` over the ranks.
    """
    if group is None or dist.get_world_size(group) == 1:
        return lse, tgt, px
    local = torch.stack([lse, tgt, px])
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    allv = torch.stack(parts)  # (world, 3, N)
    return merge_partial_stats(allv[:, 0], allv[:, 1], allv[:, 2])


def all_reduce_sum_(t: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """In-place sum over ``group`` (no-op without one); returns ``t``."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class ShardedLogprobs(torch.autograd.Function):
    """Log-probs and entropy of vocabulary-sharded logits (see the module docstring)."""

    @staticmethod
    def forward(ctx, logits, targets, inv_temp, group, backend: Backend, inplace: bool):
        vocab_start, _ = shard_info(logits.shape[1], group)
        lse, tgt, px = backend.stats(logits, targets, vocab_start, inv_temp)
        lse, tgt, px = combine_stats(lse, tgt, px, group)
        ctx.save_for_backward(logits, targets, lse, px)
        ctx.inv_temp, ctx.vocab_start, ctx.backend, ctx.inplace = (
            inv_temp,
            vocab_start,
            backend,
            inplace,
        )
        return tgt - lse, lse - px

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        logits, targets, lse, px = ctx.saved_tensors
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        grad = ctx.backend.grad(
            logits,
            targets,
            lse,
            px,
            grad_logp,
            grad_ent,
            None,
            ctx.vocab_start,
            ctx.inv_temp,
            ctx.inplace,
        )
        return grad, None, None, None, None, None
