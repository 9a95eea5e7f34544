"""What a GRPO-loop step reports besides its losses: the rollout's metrics and the step's work
(tokens and model FLOPs, for the profiler's throughput and MFU)."""

from __future__ import annotations

from typing import Any

from dsm_engine.grpo.config import GOLD_ALGORITHMS, GRPOConfig
from dsm_engine.trainers.flops import train_flops_per_token
from dsm_engine.trainers.profiling import StepWork


def response_metrics(batch: Any) -> dict[str, float]:
    """Response lengths and the share cut at ``rollout.max_new_tokens`` (gold ones too)."""
    lens = batch.response_len.float()
    return {
        "response_len_mean": float(lens.mean()),
        "response_len_max": float(lens.max()),
        "truncated_frac": float((~batch.finished).float().mean()),
    }


def rollout_metrics(ro: Any, group_size: int) -> dict[str, float]:
    """Reward, accuracy, zero-variance groups, response lengths and tool use of a rollout."""
    b = ro.batch
    r = b.rewards.view(-1, group_size)
    return {
        "reward_mean": float(b.rewards.mean()),
        "reward_std": float(b.rewards.std(unbiased=False)),
        "accuracy": sum(ro.correct) / len(ro.correct),
        "zero_var_group_frac": float((r.std(dim=1, unbiased=False) == 0).float().mean()),
        **response_metrics(b),
        **ro.tool,
    }


def step_work(batch: Any, pad_id: int, model_cfg: Any, cfg: GRPOConfig, dp_size: int) -> StepWork:
    """The step's tokens and model FLOPs for the whole job (this rank's rows × ``dp_size``):
    μ forward + backward passes over the rows, the reference (and recomputed old) log-prob
    forwards, one forward per generated token (a forward is a third of training's cost) and,
    under ppo, the critic's value forward and its one forward + backward (counted as the
    policy's: the same backbone); gold solutions (sft) are not generated."""
    fwd = train_flops_per_token(model_cfg, seq_length=batch.tokens.shape[1]) / 3
    rows = float((batch.tokens != pad_id).sum()) * dp_size
    gen = 0.0 if cfg.algorithm.name in GOLD_ALGORITHMS else float(batch.mask.sum()) * dp_size
    train = rows * cfg.grpo.mu
    passes = 1 + (cfg.grpo.old_logp == "recompute")
    if cfg.algorithm.name == "ppo":
        train += rows
        passes += 1
    step_flops = 3 * fwd * train + fwd * rows * passes + fwd * gen
    return StepWork(
        train_tokens=train, train_flops=3 * fwd * train, step_flops=step_flops, gen_tokens=gen
    )
