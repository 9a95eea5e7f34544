"""PPO in the GRPO loop (``algorithm.name: ppo``; DeepSeekMath §4.1, the paper's baseline).

Per step, after the rollout and the reference / old log-probs of :class:`GRPORun`:

1. values: the critic's per-token values ``V_old`` of the sampled responses;
2. advantages: per-token rewards ``r_t = r(q, o) [t last] - β (log π_old - log π_ref)``
   (paper eq. 2, ``β = grpo.beta``), GAE with ``algorithm.gamma`` / ``lam`` → advantages and
   returns (coefficient ``ppo`` of ``dsm_engine.grpo.algorithms``);
3. the policy's μ updates of the clipped surrogate on those advantages (``plan_update``; the KL
   is in the reward, so the loss has none);
4. one update of the critic on the clipped value loss (``algorithm.value_clip``) towards the
   returns, with its own optimizer and learning rate (``critic.lr`` under ``schedule``).

:class:`Critic` owns the value model: built beside the policy in the session's builder (same
TP/PP layout, ``optim``'s optimizer), started from the policy's initial weights or from a
reward model (``critic.load``), saved with every checkpoint under ``<run_dir>/critic/``
(weights and optimizer state) and restored on resume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dsm_engine.grpo.algorithms import CoefficientInputs, LossSettings, coefficient, plan_update
from dsm_engine.grpo.batch import GRPOBatch
from dsm_engine.grpo.config import GRPOConfig
from dsm_engine.grpo.critic import build_critic, init_critic_from_policy, token_values, value_step
from dsm_engine.models.parallel import ParallelContext
from dsm_engine.trainers.optim import grad_finalizer
from dsm_engine.trainers.schedules import apply_lr, lr_at

CRITIC_DIR = "critic"


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked tokens (1: the values predict the returns;
    0: no better than their mean; NaN when the returns do not vary)."""
    m = mask.bool()
    v, r = values.float()[m], returns.float()[m]
    var = r.var(unbiased=False)
    if r.numel() == 0 or float(var) == 0.0:
        return float("nan")
    return float(1 - (r - v).var(unbiased=False) / var)


class Critic:
    """PPO's value model on this rank, its optimizer and its checkpoints."""

    def __init__(self, cfg: GRPOConfig) -> None:
        self.cfg = cfg
        self.model: torch.nn.Module | None = None
        self.opt: Any = None
        self.zero_grad: Any = None

    def build(self, ctx: ParallelContext) -> None:
        """Build the critic (the policy's architecture, or ``critic.load``'s) and its optimizer."""
        from dsm_engine.models.build import set_activation_recompute
        from dsm_engine.trainers.optim import wrap_and_build_optimizer

        model_cfg = self.cfg.model_config()
        if self.cfg.critic.load:
            from dsm_engine.models.checkpoint import read_meta, resolve_checkpoint
            from dsm_engine.models.config import model_config

            meta = read_meta(resolve_checkpoint(self.cfg.critic.load))
            model_cfg = model_config(meta["model_config"])
        critic = build_critic(model_cfg, ctx)
        set_activation_recompute([critic], self.cfg.train.recompute)
        bf16 = model_cfg.params_dtype == "bfloat16"
        chunks, self.opt, self.zero_grad = wrap_and_build_optimizer(
            [critic], self.cfg.optim, bf16=bf16
        )
        self.model = chunks[0]

    # -- initial weights and checkpoints ------------------------------------------------------

    def start(self, policy: torch.nn.Module) -> None:
        """A fresh run's critic: ``critic.load``'s reward model, else the policy's backbone
        (``policy`` holds its initial weights) with a fresh score head."""
        if self.cfg.critic.load:
            from dsm_engine.models.checkpoint import load_checkpoint

            load_checkpoint(self.cfg.critic.load, self.model)
        else:
            init_critic_from_policy(self.model, policy)
        # a mixed-precision optimizer copied the weights it steps when it was built
        reload = getattr(self.opt, "reload_model_params", None)
        if reload is not None:
            reload()

    def save(self, run_dir: Path, done: int) -> None:
        """Weights and optimizer state after step ``done`` under ``run_dir/critic/``."""
        from dsm_engine.models.checkpoint import save_checkpoint

        save_checkpoint(run_dir / CRITIC_DIR, done, self.model, optimizer=self.opt)

    def restore(self, run_dir: Path, step: int) -> None:
        """Load what :meth:`save` wrote after step ``step``."""
        from dsm_engine.models.checkpoint import load_checkpoint

        load_checkpoint(run_dir / CRITIC_DIR, self.model, optimizer=self.opt, step=step)

    # -- the step's parts ---------------------------------------------------------------------

    def lr(self, step: int) -> float:
        """The critic's learning rate at ``step``: ``schedule``'s shape, ``critic.lr``'s peak."""
        c = self.cfg
        schedule = c.schedule
        if c.critic.lr is not None:
            schedule = dataclasses.replace(schedule, lr=c.critic.lr)
        return lr_at(schedule, step, c.grpo.steps)

    def values(self, batch: GRPOBatch) -> Tensor:
        """``V_old``: per-token values ``(B, T)`` fp32 of the batch (no grad)."""
        return token_values(
            self.model, batch.tokens, micro_batch_size=self.cfg.grpo.micro_batch_size
        )

    def update(
        self, step: int, batch: GRPOBatch, old_values: Tensor, returns: Tensor
    ) -> dict[str, float]:
        """One optimizer step of the clipped value loss towards ``returns``; its metrics."""
        lr = self.lr(step)
        apply_lr(self.opt, lr)
        loss, grad_norm, metrics = value_step(
            self.model,
            self.opt,
            self.zero_grad,
            batch,
            old_values,
            returns,
            clip=self.cfg.algorithm.value_clip,
            micro_batch_size=self.cfg.grpo.micro_batch_size,
            finalize_grads=grad_finalizer(self.cfg.optim, [self.model]),
        )
        return {"value_loss": loss, "critic_grad_norm": grad_norm, "critic_lr": lr, **metrics}


def ppo_update(
    run: Any, step: int, batch: GRPOBatch, old_logp: Tensor, ref_logp: Tensor, metrics: dict
) -> tuple[Any, dict[str, float]]:
    """PPO's part of :meth:`GRPORun.step` (``run``): values, GAE advantages, the policy's
    updates, then the critic's. Returns the policy's update result and the truncated importance
    sampling's metrics; the advantages' and the critic's metrics go to ``metrics``."""
    from dsm_engine.grpo.step import token_advantages

    g, critic, phase = run.cfg.grpo, run.critic, run.session.phase
    with phase("values"):
        values = critic.values(batch)
    with phase("advantages"):
        x = CoefficientInputs.of_batch(batch, g.group_size, old_logp, ref_logp, values=values)
        coef = coefficient(run.cfg.algorithm, x, LossSettings.of(g))
        plan = plan_update(batch, coef, g)  # ppo keeps every row
        metrics.update(coef.metrics, update_skipped=0.0)
        metrics["explained_variance"] = explained_variance(values, coef.returns, batch.mask)
        adv, tis = token_advantages(
            plan.advantages, old_logp, batch.sampler_logp, batch.mask, g.tis_cap
        )
    upd = run.update(batch, old_logp, ref_logp, adv, plan.config)
    with phase("critic_update"):
        metrics.update(critic.update(step, batch, values, coef.returns))
    return upd, tis
