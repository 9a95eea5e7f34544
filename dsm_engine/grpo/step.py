"""The GRPO step's model work: log-prob recomputation and the μ clipped-objective updates.

Both run through megatron-core's ``get_forward_backward_func()`` schedule, as the pretraining
loop does: no pipelining at pp = 1, the 1F1B pipeline schedule at pp > 1. Everything is
computed on the last stage's final hidden states (``return_hidden``) with the lm_head shard of
this TP rank, so the ``(B, T, V)`` logits are never materialised (``fused_linear_*``). What
every rank needs (per-token log-probs and entropies, the loss and its metrics) is broadcast
from the last pipeline stage over the pipeline group.

Rows are split into microbatches of ``micro_batch_size`` (the last may be shorter; stage
boundaries then exchange shapes, ``variable_seq_lengths``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dsm_engine.grpo.batch import GRPOBatch
from dsm_engine.grpo.config import GRPOAlgoConfig
from dsm_engine.kernels import fused_linear_grpo_loss, fused_linear_logprobs

# loss_func(row slice, hidden (b, t, h)) -> (loss, info); runs on the last stage only
LossFn = Callable[[slice, torch.Tensor], tuple[torch.Tensor, dict[str, Any]]]


def _microbatches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _pp_info() -> tuple[int, bool, Any]:
    """(pipeline size, whether this is the last stage, the pipeline group)."""
    from megatron.core import parallel_state as ps

    size = ps.get_pipeline_model_parallel_world_size()
    return size, ps.is_pipeline_last_stage(), ps.get_pipeline_model_parallel_group()


def _broadcast_from_last_stage(t: torch.Tensor) -> torch.Tensor:
    """``t`` as held by the last pipeline stage, on every stage (same shape/dtype everywhere)."""
    size, _, group = _pp_info()
    if size > 1:
        dist.broadcast(t, src=dist.get_process_group_ranks(group)[-1], group=group)
    return t


@contextlib.contextmanager
def _schedule_config(model: torch.nn.Module) -> Iterator[None]:
    """Adjust the model's TransformerConfig for the GRPO schedule runs, then restore it.

    ``variable_seq_lengths``: stage boundaries exchange tensor shapes first, so a shorter last
    microbatch (and each step's new padded length) needs no fixed shape. The schedule's own
    ``finalize_model_grads_func`` is held back: the caller finalizes once, before the
    optimizer step (``grpo_updates(finalize_grads=...)``).
    """
    from dsm_engine.models.build import _unwrap

    config = _unwrap(model).config
    saved = (config.variable_seq_lengths, config.finalize_model_grads_func)
    config.variable_seq_lengths = True
    config.finalize_model_grads_func = None
    try:
        yield
    finally:
        config.variable_seq_lengths, config.finalize_model_grads_func = saved


def run_schedule(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    micro_batch_size: int,
    loss_fn: LossFn,
    *,
    forward_only: bool,
) -> list[dict[str, Any]]:
    """Run ``tokens`` ``(B, T)`` through megatron-core's schedule in row microbatches.

    On the last stage ``loss_fn(rows, hidden)`` gets the final hidden states ``(b, T, H)`` of
    each microbatch and returns ``(loss, info)``; unless ``forward_only`` the loss is
    backpropagated through every stage as given (the schedule's division by the microbatch
    count is undone here). Returns the ``info`` dicts in microbatch order on the last stage,
    ``[]`` on the others. Collective over the pipeline group.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    slices = _microbatches(tokens.shape[0], micro_batch_size)
    count = len(slices)
    positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)

    def forward_step(data_iterator: Iterator[slice], chunk: torch.nn.Module):
        sl = next(data_iterator)
        rows = tokens[sl]
        out = chunk(rows, positions.expand_as(rows), None, return_hidden=True)

        def loss_func(hidden: torch.Tensor):
            loss, info = loss_fn(sl, hidden.transpose(0, 1))  # [s, b, h] -> (b, s, h)
            return loss * count, info

        return out, loss_func

    with _schedule_config(model):
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(slices),
            model=[model],
            num_microbatches=count,
            seq_length=tokens.shape[1],
            micro_batch_size=micro_batch_size,
            forward_only=forward_only,
        )


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
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token fp32 log-probs ``(B, T)`` of ``targets`` (and entropies) under ``model``.

    tokens, targets: ``(B, T)`` int64 on the model's device. mask: ``(B, T)`` bool, the
    targets wanted (the responses'); the others get 0 and cost no lm_head work (default: all).
    Runs in microbatches, no grad. Collective over the TP and pipeline groups; every stage
    returns the same tensors.
    """
    from dsm_engine.models.build import lm_head_weight

    was_training = model.training
    model.eval()

    def loss_fn(sl: slice, hidden: torch.Tensor):
        b, t, d = hidden.shape
        flat, wanted = hidden.reshape(b * t, d), targets[sl].reshape(b * t)
        keep = None if mask is None else mask[sl].reshape(b * t)
        if keep is not None:
            flat, wanted = flat[keep], wanted[keep]
        out = fused_linear_logprobs(
            flat,
            lm_head_weight(model),
            wanted,
            temperature=temperature,
            tp_group=tp_group,
            return_entropy=return_entropy,
            impl=impl,
        )
        info = {}
        for key, got in zip(("logp", "ent"), out if return_entropy else (out,)):
            if keep is not None:  # the skipped targets' entries are 0
                got = got.new_zeros(b * t, dtype=torch.float32).masked_scatter(keep, got.float())
            info[key] = got.reshape(b, t)
        return hidden.new_zeros(()), info

    infos = run_schedule(model, tokens, micro_batch_size, loss_fn, forward_only=True)
    model.train(was_training)
    _, last, _ = _pp_info()
    shape = tuple(tokens.shape)

    def gathered(key: str) -> torch.Tensor:
        if last:
            t = torch.cat([i[key] for i in infos]).float().contiguous()
        else:
            t = torch.empty(shape, dtype=torch.float32, device=tokens.device)
        return _broadcast_from_last_stage(t)

    return gathered("logp"), (gathered("ent") if return_entropy else None)


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


# the loss and metrics accumulate_grads reports, in the order they cross the pipeline
_REPORTED = (
    "loss",
    "kl_mean",
    "clip_frac_low",
    "clip_frac_high",
    "ratio_mean",
    "nonfinite",
    "ratio_min",
    "ratio_max",
)


def _reduce_microbatches(infos: list[dict[str, Any]]) -> dict[str, float]:
    """Batch loss (sum of the weighted microbatch losses) and token-weighted kernel metrics."""
    total_loss, count, nonfinite = 0.0, 0.0, 0.0
    sums: dict[str, float] = {}
    rmin, rmax = float("inf"), float("-inf")
    for info in infos:
        n, m = info["tokens"], info["metrics"]
        total_loss += float(info["loss"]) * info["share"]
        count += n
        for k in ("kl_mean", "clip_frac_low", "clip_frac_high", "ratio_mean"):
            sums[k] = sums.get(k, 0.0) + float(m[k]) * n
        nonfinite += float(m["nonfinite"])
        if n:
            rmin, rmax = min(rmin, float(m["ratio_min"])), max(rmax, float(m["ratio_max"]))
    out = {k: v / max(count, 1.0) for k, v in sums.items()}
    out.update(
        loss=total_loss,
        nonfinite=nonfinite,
        ratio_min=rmin if count else 0.0,
        ratio_max=rmax if count else 0.0,
    )
    return out


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
    ``cfg.loss_agg`` (a row share for the seq-mean forms, a token share for ``token-mean``),
    whatever the microbatch split or pipeline layout. ``advantages`` is ``(B,)`` or ``(B, T)``.
    Collective over the TP and pipeline groups; every stage returns the same numbers.
    """
    from dsm_engine.models.build import lm_head_weight

    b = len(batch)
    total_tokens = float(batch.mask.sum().clamp(min=1))

    def loss_fn(sl: slice, hidden: torch.Tensor):
        mask = batch.mask[sl]
        n = float(mask.sum())
        share = n / total_tokens if cfg.loss_agg == "token-mean" else (sl.stop - sl.start) / b
        loss, m = fused_linear_grpo_loss(
            hidden,
            lm_head_weight(model),
            batch.targets[sl],
            old_logp[sl],
            ref_logp[sl],
            mask,
            advantages=advantages[sl],
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            beta=cfg.beta,
            loss_agg=cfg.loss_agg,
            max_len=max_len,
            temperature=temperature,
            tp_group=tp_group,
            impl=cfg.impl,
            grad_weight_accum=cfg.grad_weight_accum,
            # The schedule backpropagates loss * share (its count factors cancel), so a
            # main_grad weight gets its gradient in the forward pass: 6NHV, not 8NHV.
            grad_scale=share,
        )
        info = {"loss": loss.detach(), "share": share, "tokens": n, "metrics": m}
        return loss * share, info

    infos = run_schedule(model, batch.tokens, cfg.micro_batch_size, loss_fn, forward_only=False)
    _, last, _ = _pp_info()
    values = torch.zeros(len(_REPORTED), dtype=torch.float64, device=batch.tokens.device)
    if last:
        reduced = _reduce_microbatches(infos)
        values = torch.tensor([reduced[k] for k in _REPORTED], dtype=torch.float64).to(values)
    out = dict(zip(_REPORTED, _broadcast_from_last_stage(values).tolist()))
    loss = out.pop("loss")
    return loss, out


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
    phase: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> UpdateResult:
    """Run ``cfg.mu`` optimizer steps on ``batch`` (see :func:`accumulate_grads`).

    ``finalize_grads`` (megatron DDP: ``finalize_model_grads``) runs once before each optimizer
    step; it is the only grad finalization (the schedule's own hook is held back).
    ``phase(name)``: a context timing the ``forward_backward`` and ``optimizer`` parts
    (``StepProfiler.phase``).
    """
    phase = phase or (lambda _name: contextlib.nullcontext())
    model.train()
    losses, norms, all_metrics = [], [], []
    for _ in range(cfg.mu):
        with phase("forward_backward"):
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
        with phase("optimizer"):
            _, grad_norm, _ = optimizer.step()
        losses.append(loss)
        norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
        all_metrics.append(metrics)
    merged = {k: sum(m[k] for m in all_metrics) / len(all_metrics) for k in all_metrics[0]}
    merged["ratio_min"] = min(m["ratio_min"] for m in all_metrics)
    merged["ratio_max"] = max(m["ratio_max"] for m in all_metrics)
    return UpdateResult(sum(losses) / len(losses), sum(norms) / len(norms), merged)
