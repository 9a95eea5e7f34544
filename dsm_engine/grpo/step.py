"""The GRPO step's model work: log-prob recomputation and the μ clipped-objective updates.

Everything runs on the policy's final hidden states (``forward_hidden``) with the lm_head
shard of this TP rank; the ``(B, T, V)`` logits are never materialised (``fused_linear_*``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsm_engine.grpo.batch import GRPOBatch
from dsm_engine.grpo.config import GRPOAlgoConfig
from dsm_engine.kernels import fused_linear_grpo_loss, fused_linear_logprobs, group_advantages


def _hidden(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    from dsm_engine.models.build import forward_hidden

    return forward_hidden(model, tokens).transpose(0, 1)  # [s, b, h] -> (b, s, h)


def _microbatches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    tp_group=None,
    micro_batch_size: int,
    return_entropy: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token fp32 log-probs ``(B, T)`` of ``targets`` (and entropies) under ``model``.

    tokens, targets: ``(B, T)`` int64 on the model's device. Runs in microbatches, no grad.
    """
    from dsm_engine.models.build import lm_head_weight

    was_training = model.training
    model.eval()
    weight = lm_head_weight(model)
    logps, ents = [], []
    for sl in _microbatches(tokens.shape[0], micro_batch_size):
        h = _hidden(model, tokens[sl])
        b, t, d = h.shape
        out = fused_linear_logprobs(
            h.reshape(b * t, d),
            weight,
            targets[sl].reshape(b * t),
            temperature=temperature,
            tp_group=tp_group,
            return_entropy=return_entropy,
            impl=impl,
        )
        lp, ent = out if return_entropy else (out, None)
        logps.append(lp.reshape(b, t))
        if ent is not None:
            ents.append(ent.reshape(b, t))
    model.train(was_training)
    return torch.cat(logps), (torch.cat(ents) if return_entropy else None)


def mismatch_metrics(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Rollout-vs-trainer log-prob mismatch over response tokens: mean |Δ|, mean exp(|Δ|),
    max |Δ| (Δ = trainer - sampler log-prob of the sampled token)."""
    d = (trainer_logp.float() - sampler_logp.float())[mask].abs()
    if d.numel() == 0:
        return {"mismatch_abs": 0.0, "mismatch_exp_abs": 1.0, "mismatch_max": 0.0}
    return {
        "mismatch_abs": float(d.mean()),
        "mismatch_exp_abs": float(torch.exp(d).mean()),
        "mismatch_max": float(d.max()),
    }


def token_advantages(
    adv: torch.Tensor,
    old_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    tis_cap: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages ``(B,)`` or per-token ``(B, T)`` (process supervision); ``(B, T)`` whenever
    truncated importance sampling is on.

    TIS weights token t by ``w = min(exp(old - sampler), cap)``. Because ``w > 0``,
    ``w * min(r*A, clip(r)*A) = min(r*(wA), clip(r)*(wA))``: weighting the advantage weights
    exactly the policy-gradient term and leaves the KL penalty alone.
    """
    if tis_cap is None:
        return adv, {}
    w = torch.exp(old_logp.float() - sampler_logp.float()).clamp(max=tis_cap)
    w = torch.where(mask, w, torch.zeros_like(w))
    valid = w[mask]
    stats = {
        "tis_weight_mean": float(valid.mean()) if valid.numel() else 1.0,
        "tis_clipped_frac": float((valid >= tis_cap).float().mean()) if valid.numel() else 0.0,
    }
    return (adv if adv.dim() == 2 else adv[:, None]) * w, stats


@dataclass
class UpdateResult:
    """Averages over the μ updates: loss, grad norm, and the loss kernel's metrics."""

    loss: float
    grad_norm: float
    metrics: dict[str, float]


def accumulate_grads(
    model: torch.nn.Module,
    batch: GRPOBatch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    cfg: GRPOAlgoConfig,
    *,
    temperature: float,
    max_len: int | None = None,
    tp_group=None,
) -> tuple[float, dict[str, float]]:
    """Backpropagate the GRPO loss of ``batch`` into ``model``'s ``.grad``, microbatch by
    microbatch; returns the batch loss and the loss kernel's metrics over all tokens.

    Microbatch losses are weighted so that their sum is the loss of the whole batch under
    ``cfg.loss_agg`` (a row share for the seq-mean forms, a token share for ``token-mean``).
    ``advantages`` is ``(B,)`` or ``(B, T)``.
    """
    from dsm_engine.models.build import lm_head_weight

    b = len(batch)
    total_tokens = float(batch.mask.sum().clamp(min=1))
    total_loss, count = 0.0, 0.0
    sums: dict[str, float] = {}
    rmin, rmax = float("inf"), float("-inf")
    for sl in _microbatches(b, cfg.micro_batch_size):
        mb = batch.rows(sl)
        n = float(mb.mask.sum())
        share = n / total_tokens if cfg.loss_agg == "token-mean" else (sl.stop - sl.start) / b
        hidden = _hidden(model, mb.tokens)
        loss, m = fused_linear_grpo_loss(
            hidden,
            lm_head_weight(model),
            mb.targets,
            old_logp[sl],
            ref_logp[sl],
            mb.mask,
            advantages=advantages[sl],
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            beta=cfg.beta,
            loss_agg=cfg.loss_agg,
            max_len=max_len,
            temperature=temperature,
            tp_group=tp_group,
            impl=cfg.impl,
        )
        (loss * share).backward()
        total_loss += float(loss.detach()) * share
        count += n
        for k in ("kl_mean", "clip_frac_low", "clip_frac_high", "ratio_mean"):
            sums[k] = sums.get(k, 0.0) + float(m[k]) * n
        sums["nonfinite"] = sums.get("nonfinite", 0.0) + float(m["nonfinite"])
        if n:
            rmin, rmax = min(rmin, float(m["ratio_min"])), max(rmax, float(m["ratio_max"]))
    metrics = {k: v / max(count, 1.0) for k, v in sums.items() if k != "nonfinite"}
    metrics["nonfinite"] = sums.get("nonfinite", 0.0)
    metrics["ratio_min"] = rmin if count else 0.0
    metrics["ratio_max"] = rmax if count else 0.0
    return total_loss, metrics


def grpo_updates(
    model: torch.nn.Module,
    optimizer,
    zero_grad: Callable[[], None],
    batch: GRPOBatch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    cfg: GRPOAlgoConfig,
    *,
    temperature: float,
    max_len: int | None = None,
    tp_group=None,
    finalize_grads: Callable[[], None] | None = None,
) -> UpdateResult:
    """Run ``cfg.mu`` optimizer steps on ``batch`` (see :func:`accumulate_grads`);
    ``finalize_grads`` (megatron DDP) runs before each optimizer step."""
    model.train()
    losses, norms, all_metrics = [], [], []
    for _ in range(cfg.mu):
        zero_grad()
        loss, metrics = accumulate_grads(
            model,
            batch,
            old_logp,
            ref_logp,
            advantages,
            cfg,
            temperature=temperature,
            max_len=max_len,
            tp_group=tp_group,
        )
        if finalize_grads is not None:
            finalize_grads()
        _, grad_norm, _ = optimizer.step()
        losses.append(loss)
        norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
        all_metrics.append(metrics)
    merged = {k: sum(m[k] for m in all_metrics) / len(all_metrics) for k in all_metrics[0]}
    merged["ratio_min"] = min(m["ratio_min"] for m in all_metrics)
    merged["ratio_max"] = max(m["ratio_max"] for m in all_metrics)
    return UpdateResult(sum(losses) / len(losses), sum(norms) / len(norms), merged)


def advantages_of(rewards: torch.Tensor, group_size: int, impl: str = "auto") -> torch.Tensor:
    """Group-normalised outcome advantages ``(B,)`` (``(r - mean) / (std + 1e-6)`` per group)."""
    return group_advantages(rewards.float(), group_size, impl=impl)
