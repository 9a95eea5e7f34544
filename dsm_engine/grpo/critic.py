"""PPO's value model: a critic on the policy's architecture, its per-token values and the
clipped value loss (DeepSeekMath §4.1: PPO trains a value model of the policy's size).

The critic is a reward model (``dsm_engine.reward_models.model``): the policy's backbone with
a scalar head, split over TP/PP as the policy is, initialised from the policy
(``init_critic_from_policy``) or from a checkpoint (``load_backbone``) or a reward model. Its
value of the state before response token t is its score at position t (the position whose
target is that token). Values and the value-loss gradient run through the GRPO step's
schedule (``run_schedule``), so they work under TP and PP like the policy's log-probs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dsm_engine.grpo.batch import GRPOBatch
from dsm_engine.grpo.step import _broadcast_from_last_stage, _pp_info, run_schedule
from dsm_engine.models.config import ModelConfig
from dsm_engine.models.parallel import ParallelConfig, ParallelContext
from dsm_engine.reward_models.model import HEAD, RewardGPTModel, build_reward_model


def build_critic(
    model_cfg: ModelConfig, parallel: ParallelContext | ParallelConfig | None = None
) -> RewardGPTModel:
    """This rank's critic (its stage and TP shard of the policy's architecture, scalar head)."""
    return build_reward_model(model_cfg, parallel)


@torch.no_grad()
def init_critic_from_policy(critic: torch.nn.Module, policy: torch.nn.Module) -> None:
    """Copy the policy's backbone (same architecture and TP/PP layout) into the critic; the
    score head keeps its initialisation. Raises ValueError naming a backbone tensor the policy
    lacks or holds in another shape."""
    source = dict(policy.named_parameters())
    for name, p in critic.named_parameters():
        if HEAD in name.split("."):
            continue
        q = source.get(name)
        if q is None or q.shape != p.shape:
            raise ValueError(
                f"init_critic_from_policy: the policy has no tensor {name} {tuple(p.shape)}"
            )
        p.copy_(q)


def _scores(out: Tensor) -> Tensor:
    # run_schedule hands loss functions the last stage's output with dims 0 and 1 swapped
    # (it expects hidden states [s, b, h]); the critic's last stage outputs scores [b, s]
    return out.transpose(0, 1)


@torch.no_grad()
def token_values(critic: torch.nn.Module, tokens: Tensor, *, micro_batch_size: int) -> Tensor:
    """Per-position values ``(B, T)`` fp32 of ``tokens`` ``(B, T)`` int64 (position t: the value
    of the state before target t). No grad; collective over the TP and pipeline groups; every
    stage returns the same tensor."""
    was_training = critic.training
    critic.eval()

    def loss_fn(sl: slice, out: Tensor):
        return out.new_zeros(()), {"values": _scores(out).float()}

    infos = run_schedule(critic, tokens, micro_batch_size, loss_fn, forward_only=True)
    critic.train(was_training)
    _, last, _ = _pp_info()
    if last:
        values = torch.cat([i["values"] for i in infos]).contiguous()
    else:
        values = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
    return _broadcast_from_last_stage(values)


def clipped_value_loss_sum(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, Tensor]:
    """``Σ_masked 0.5 max((V - R)², (V_old + clip(V - V_old, ±clip) - R)²)`` (fp32, 0-d,
    differentiable in ``values``) and the number of masked tokens whose clipped term is larger.
    All inputs ``(B, T)``."""
    v = values.float()
    old = old_values.float()
    clipped = old + (v - old).clamp(-clip, clip)
    unclipped_sq = (v - returns.float()).square()
    clipped_sq = (clipped - returns.float()).square()
    per_token = 0.5 * torch.maximum(unclipped_sq, clipped_sq)
    m = mask.bool()
    total = torch.where(m, per_token, torch.zeros_like(per_token)).sum()
    return total, ((clipped_sq > unclipped_sq) & m).sum()


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped value loss as a masked mean over tokens, and the fraction clipped."""
    total, clipped = clipped_value_loss_sum(values, old_values, returns, mask, clip)
    n = mask.bool().sum().clamp(min=1)
    return total / n, {"value_clip_frac": float(clipped / n)}


def accumulate_value_grads(
    critic: torch.nn.Module,
    batch: GRPOBatch,
    old_values: Tensor,
    returns: Tensor,
    *,
    clip: float,
    micro_batch_size: int,
) -> tuple[float, dict[str, float]]:
    """Backpropagate the clipped value loss of ``batch`` (masked mean over all its response
    tokens) into ``critic``'s ``.grad``, microbatch by microbatch; returns the loss and the
    clipped fraction. old_values, returns: ``(B, T)``. Collective over the TP and pipeline
    groups; every stage returns the same numbers."""
    total_tokens = float(batch.mask.sum().clamp(min=1))

    def loss_fn(sl: slice, out: Tensor):
        total, clipped = clipped_value_loss_sum(
            _scores(out), old_values[sl], returns[sl], batch.mask[sl], clip
        )
        loss = total / total_tokens
        return loss, {"loss": loss.detach(), "clipped": clipped}

    infos = run_schedule(critic, batch.tokens, micro_batch_size, loss_fn, forward_only=False)
    _, last, _ = _pp_info()
    out = torch.zeros(2, dtype=torch.float64, device=batch.tokens.device)
    if last:
        out[0] = sum(float(i["loss"]) for i in infos)
        out[1] = sum(float(i["clipped"]) for i in infos) / total_tokens
    loss, frac = _broadcast_from_last_stage(out).tolist()
    return loss, {"value_clip_frac": frac}


def value_step(
    critic: torch.nn.Module,
    optimizer,
    zero_grad,
    batch: GRPOBatch,
    old_values: Tensor,
    returns: Tensor,
    *,
    clip: float,
    micro_batch_size: int,
    finalize_grads=None,
) -> tuple[float, float, dict[str, float]]:
    """One optimizer step of ``critic`` on the clipped value loss of ``batch`` towards
    ``returns`` (:func:`accumulate_value_grads`); ``finalize_grads`` (megatron DDP:
    ``finalize_model_grads``) runs before the step. Returns the loss, the grad norm (NaN when
    the optimizer gives none) and the clipped fraction."""
    critic.train()
    zero_grad()
    loss, metrics = accumulate_value_grads(
        critic, batch, old_values, returns, clip=clip, micro_batch_size=micro_batch_size
    )
    if finalize_grads is not None:
        finalize_grads()
    _, grad_norm, _ = optimizer.step()
    return loss, float(grad_norm) if grad_norm is not None else float("nan"), metrics
