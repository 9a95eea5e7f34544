"""The update of a method other than GRPO in the GRPO loop (``algorithm.name``; DeepSeekMath
§5.2): its gradient coefficient on the rollout batch (``dsm_engine.grpo.algorithms``), the
rows it keeps (``plan_update``) and the policy's update on them through :class:`GRPORun`
(``run``: its config, session, parallel context and ``update``). ``ppo``'s, which adds the
critic, is ``dsm_engine.grpo.ppo``.

Under data parallelism the ranks keep different numbers of rows (RFT's correct samples, DPO's
pairs), possibly none: every rank still runs the update (a zero coefficient where it keeps
nothing) and weighs its gradient by its share of what was kept, so the averaged gradient is
the one a single process would take over all the ranks' rows."""

from __future__ import annotations

from typing import Any

import torch

from dsm_engine.grpo.algorithms import (
    Coefficient,
    CoefficientInputs,
    LossSettings,
    UpdatePlan,
    coefficient,
    plan_update,
)
from dsm_engine.grpo.dpo import dpo_loss, select_pairs, sequence_logp
from dsm_engine.grpo.step import UpdateResult, token_advantages
from dsm_engine.trainers.session import dp_mean


def coefficient_plan(
    run: Any, step: int, batch: Any, old_logp: Any, ref_logp: Any, metrics: dict[str, float]
) -> UpdatePlan | None:
    """The update of ``algorithm.name``'s gradient coefficient on ``batch`` (None: it keeps
    no row on any data-parallel rank); DPO's pairs are drawn here. Its metrics go to
    ``metrics``."""
    cfg, g, algo = run.cfg, run.cfg.grpo, run.cfg.algorithm
    with run.session.phase("advantages"):
        pairs = None
        if algo.name == "dpo":
            correct = batch.rewards >= algo.correct_threshold
            seed = cfg.train.seed * 100_003 + step * 1_009 + run.ctx.dp_rank
            pairs = select_pairs(
                correct, g.group_size, pairs_per_prompt=algo.pairs_per_prompt, seed=seed
            )
            seq = sequence_logp(old_logp, batch.mask)
            _, dpo_metrics = dpo_loss(
                seq, sequence_logp(ref_logp, batch.mask), pairs, algo.dpo_beta
            )
            metrics.update(dpo_metrics, dpo_pairs=float(len(pairs)))
        x = CoefficientInputs.of_batch(batch, g.group_size, old_logp, ref_logp, pairs=pairs)
        coef = coefficient(algo, x, LossSettings.of(g))
        metrics.update(coef.metrics)
        # The update is collective over data parallelism: skip only when every rank would.
        # Ranks average their gradients, so each one's is weighted by its share of the kept
        # rows (or pairs): the update is the mean over all of them, as one process's would be.
        local = {"planned": float(coef.rows is None or bool(coef.rows.any()))}
        local["weight"] = coef.weight or 0.0
        mean = dp_mean(local, run.ctx.dp_group)
        plan = plan_update(batch, coef.dp_weighted(mean["weight"]), g)
    if mean["planned"] == 0:
        return None
    if plan is None:  # others update: take part with a zero coefficient
        zero = torch.zeros(len(batch), dtype=torch.float32, device=batch.tokens.device)
        plan = plan_update(batch, Coefficient(zero, LossSettings.of(g).unclipped()), g)
    return plan


def planned_update(
    run: Any, step: int, batch: Any, old_logp: Any, ref_logp: Any, metrics: dict[str, float]
) -> tuple[UpdateResult, dict[str, float]]:
    """Coefficient, plan and update of a method other than GRPO; the update result and
    the truncated importance sampling's metrics."""
    plan = coefficient_plan(run, step, batch, old_logp, ref_logp, metrics)
    metrics["update_skipped"] = float(plan is None)
    if plan is None:
        return UpdateResult(loss=0.0, grad_norm=0.0, metrics={}), {}
    idx = plan.index
    old = old_logp[idx]
    adv, tis = token_advantages(
        plan.advantages, old, batch.sampler_logp[idx], plan.batch.mask, run.cfg.grpo.tis_cap
    )
    return run.update(plan.batch, old, ref_logp[idx], adv, plan.config), tis
