"""One GRPO loss/gradient evaluation (and μ optimizer updates) on a tiny policy, at a given
tensor- or pipeline-parallel size, the loop's step of another method (``planned_update``:
rft, dpo, ...) at a given tensor-, pipeline- or data-parallel size, and PPO's step (policy
and critic) at a given tensor-parallel size.

Used in-process by test_step.py (TP=1, PP=1) and under ``torchrun --nproc_per_node 2``:
``python step_worker.py IN.pt OUT.pt TP [PP]``. TP=2 or PP=2: the GRPO step, then the planned
steps of ``IN["planned"]`` (each ``{"algorithm", "batches": [batch], "shifts": [shift]}``),
those of ``IN["planned_sp"]`` with sequence parallelism and PPO's on ``IN["ppo"]`` with it;
rank 0 writes the outputs. TP=PP=1 (data parallelism 2): the planned steps only, rank ``r``
on ``batches[r]``; every rank writes its own outputs to ``OUT.rank<r>``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import TINY, grads_as_hf  # noqa: E402

GROUP, BETA, EPS, TEMP = 4, 0.04, 0.2, 0.7


def initial_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Hugging Face Llama state dict of the TINY architecture."""
    from transformers import LlamaForCausalLM

    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(hf_config(model_config(TINY))).state_dict()


def grpo_step_outputs(
    hf_state,
    batch,
    tp: int,
    micro_batch_size: int = 5,
    pp: int = 1,
    updates: bool = False,
    recompute: str = "none",
) -> dict:
    """Log-probs, advantages, loss, metrics and HF-named gradients of one GRPO step; with
    ``updates`` also the loss, grad norm and HF-named parameters after two optimizer steps
    (``grpo_updates`` with μ = 2, AdamW, clipping at 1.0). ``recompute``: ``train.recompute``."""
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.sampling import gather_for_sampler
    from dsm_engine.grpo.step import accumulate_grads, sequence_logprobs
    from dsm_engine.kernels import group_advantages
    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.build import set_activation_recompute
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import load_hf_weights

    cfg = model_config(TINY)
    ctx = initialize_parallel(ParallelConfig(tp=tp, pp=pp), seed=1)
    model = build_model(cfg, ctx, init_weights=False)
    set_activation_recompute([model], recompute)
    load_hf_weights(model, hf_state.__getitem__, cfg)
    # what sync_weights hands the rollout engine (copied: on the sampler rank its own stage's
    # tensors are views of the live parameters)
    sampler_sd = gather_for_sampler(model, cfg)
    sampler_sd = sampler_sd and {k: v.clone() for k, v in sampler_sd.items()}
    group = ctx.tp_group if tp > 1 else None

    def logprobs(mask=None):
        return sequence_logprobs(
            model,
            batch.tokens,
            batch.targets,
            temperature=TEMP,
            tp_group=group,
            micro_batch_size=micro_batch_size,
            return_entropy=True,
            mask=mask,
        )

    logp, ent = logprobs()
    # the trainer's reference and old passes: the response targets alone through the head
    response_logp, response_ent = logprobs(batch.mask)
    g = torch.Generator().manual_seed(7)
    old = logp + 0.3 * torch.randn(logp.shape, generator=g)  # ratios beyond both clip edges
    ref = logp + 0.5 * torch.randn(logp.shape, generator=g)
    adv = group_advantages(batch.rewards.float(), GROUP)
    algo = GRPOAlgoConfig(
        group_size=GROUP,
        micro_batch_size=micro_batch_size,
        beta=BETA,
        clip_eps_low=EPS,
        clip_eps_high=EPS,
    )
    for p in model.parameters():
        p.grad = None
    forwards = []  # calls of one layer in the update: twice per microbatch when recomputed
    if model.decoder.layers:
        hook = model.decoder.layers[0].register_forward_hook(lambda *_: forwards.append(1))
    loss, metrics = accumulate_grads(
        model, batch, old, ref, adv, algo, temperature=TEMP, tp_group=group
    )
    if model.decoder.layers:
        hook.remove()
    out = {
        "layer_forwards": len(forwards),
        "logp": logp,
        "entropy": ent,
        "response_logp": response_logp,
        "response_entropy": response_ent,
        "old": old,
        "ref": ref,
        "adv": adv,
        "loss": loss,
        "metrics": metrics,
        "grads": grads_as_hf(model, cfg),
        "sampler_sd": sampler_sd,
    }
    if updates:
        out["updates"] = _two_updates(model, cfg, batch, old, ref, adv, algo, group)
    return out


def _two_updates(model, cfg, batch, old, ref, adv, algo, tp_group) -> dict:
    from dataclasses import replace

    from dsm_engine.grpo.step import grpo_updates
    from dsm_engine.models.convert import export_hf_state_dict
    from dsm_engine.trainers.optim import OptimConfig, TorchAdamW

    opt = TorchAdamW([model], OptimConfig(weight_decay=0.1, clip_grad=1.0))
    for group in opt.param_groups:
        group["lr"] = 1e-2
    res = grpo_updates(
        model,
        opt,
        opt.zero_grad,
        batch,
        old,
        ref,
        adv,
        replace(algo, mu=2),
        temperature=TEMP,
        tp_group=tp_group,
    )
    params = {k: v.detach().clone() for k, v in export_hf_state_dict(model, cfg).items()}
    return {"loss": res.loss, "grad_norm": res.grad_norm, "metrics": res.metrics, "params": params}


def _stepped_policy(hf_state, parallel):
    """The policy as the loop builds it (initialised, then loaded: a model built for loading
    only has no tensor-parallel attributes, and the optimizer's grad norm needs them) with
    AdamW at lr 1e-2 and no clipping: ``(cfg, ctx, model, opt, optim, tp_group)``."""
    from dsm_engine.models import build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import load_hf_weights
    from dsm_engine.trainers.optim import OptimConfig, TorchAdamW

    cfg = model_config(TINY)
    ctx = initialize_parallel(parallel, seed=1)
    model = build_model(cfg, ctx)
    load_hf_weights(model, hf_state.__getitem__, cfg)
    optim = OptimConfig(weight_decay=0.1, clip_grad=0.0)
    opt = TorchAdamW([model], optim)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    return cfg, ctx, model, opt, optim, ctx.tp_group if parallel.tp > 1 else None


def _stand_in_run(run_cfg, ctx, model, opt, tp_group, **more):
    """What ``planned_update`` / ``ppo_update`` read of a ``GRPORun``, with the loop's own
    ``update``."""
    from types import SimpleNamespace

    from dsm_engine.grpo.trainer import GRPORun

    session = SimpleNamespace(
        opt=opt, zero_grad=opt.zero_grad, phase=lambda _name: contextlib.nullcontext()
    )
    run = SimpleNamespace(
        cfg=run_cfg, ctx=ctx, session=session, policy=model, tp_group=tp_group, **more
    )
    run.update = lambda *args: GRPORun.update(run, *args)
    return run


def _old_and_reference_logprobs(model, batch, shift, tp_group, micro_batch_size):
    """The policy's log-probs of ``batch`` and the reference's (them plus ``shift`` on the
    response tokens); the policy's gradients are cleared for the step."""
    from dsm_engine.grpo.step import sequence_logprobs

    old, _ = sequence_logprobs(
        model,
        batch.tokens,
        batch.targets,
        temperature=TEMP,
        tp_group=tp_group,
        micro_batch_size=micro_batch_size,
    )
    for p in model.parameters():
        p.grad = None
    return old, torch.where(batch.mask, old + shift, 0.0)


def planned_step_outputs(
    hf_state,
    scenario: dict,
    tp: int = 1,
    pp: int = 1,
    micro_batch_size: int = 3,
    sequence_parallel: bool = False,
) -> dict:
    """One step of the loop's update for ``scenario["algorithm"]`` (``planned_update``, run by
    ``GRPORun.update`` with AdamW at lr 1e-2 and no clipping). This rank takes
    ``batches[dp_rank]``; old log-probs are the policy's, the reference's are them plus
    ``shifts[dp_rank]`` ``(B, T)``. Returns the HF-named gradients the optimizer stepped with
    (averaged over data parallelism), the HF-named parameters after the step and the step's
    metrics. DPO takes every (correct, wrong) pair of a group, so the pairs do not depend on
    the rank's seed. With TP > 1 also ``tp_replica_spread``: the largest difference between
    the TP ranks' copies of the replicated (norm) weights after the step."""
    from types import SimpleNamespace

    from dsm_engine.grpo.config import AlgorithmConfig, GRPOAlgoConfig
    from dsm_engine.grpo.planned import planned_update
    from dsm_engine.models import ParallelConfig
    from dsm_engine.models.convert import export_hf_state_dict

    parallel = ParallelConfig(tp=tp, pp=pp, sequence_parallel=sequence_parallel)
    cfg, ctx, model, opt, optim, tp_group = _stepped_policy(hf_state, parallel)
    run_cfg = SimpleNamespace(
        grpo=GRPOAlgoConfig(group_size=GROUP, micro_batch_size=micro_batch_size, beta=BETA),
        algorithm=AlgorithmConfig(name=scenario["algorithm"], dpo_beta=0.5, pairs_per_prompt=16),
        train=SimpleNamespace(seed=0, recompute="none"),
        optim=optim,
        rollout=SimpleNamespace(temperature=TEMP, max_new_tokens=16),
    )
    run = _stand_in_run(run_cfg, ctx, model, opt, tp_group)
    batch = scenario["batches"][ctx.dp_rank]
    old, ref = _old_and_reference_logprobs(
        model, batch, scenario["shifts"][ctx.dp_rank], tp_group, micro_batch_size
    )
    metrics: dict[str, float] = {}
    result, _ = planned_update(run, 0, batch, old, ref, metrics)
    out = {
        "metrics": {
            **metrics,
            **result.metrics,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
        },
        "grads": grads_as_hf(model, cfg),
        "params": {k: v.detach().clone() for k, v in export_hf_state_dict(model, cfg).items()},
    }
    if tp > 1:
        out["tp_replica_spread"] = _tp_replica_spread(model, tp_group)
    return out


def ppo_step_outputs(
    hf_state,
    scenario: dict,
    tp: int = 1,
    micro_batch_size: int = 3,
    sequence_parallel: bool = False,
) -> dict:
    """The loop's PPO step (``ppo_update``: values, GAE, the policy's update, the critic's)
    on ``scenario["batches"][0]``, policy and critic (initialised from the policy, a fixed
    score head) both stepped by AdamW at lr 1e-2 without clipping. Returns the metrics, the
    policy's HF-named gradients and parameters, the critic's canonical gradients and
    parameters after the step, and with TP > 1 the spread of both models' TP replicas."""
    from types import SimpleNamespace

    from dsm_engine.grpo.config import AlgorithmConfig, CriticConfig, GRPOAlgoConfig
    from dsm_engine.grpo.ppo import Critic, ppo_update
    from dsm_engine.models import ParallelConfig
    from dsm_engine.models.convert import export_hf_state_dict, gather_canonical
    from dsm_engine.trainers.schedules import ScheduleConfig

    parallel = ParallelConfig(tp=tp, sequence_parallel=sequence_parallel)
    cfg, ctx, model, opt, optim, tp_group = _stepped_policy(hf_state, parallel)
    run_cfg = SimpleNamespace(
        grpo=GRPOAlgoConfig(group_size=GROUP, micro_batch_size=micro_batch_size, beta=BETA),
        algorithm=AlgorithmConfig(name="ppo"),
        critic=CriticConfig(lr=1e-2),
        schedule=ScheduleConfig(name="constant", lr=1e-2, warmup_steps=0),
        train=SimpleNamespace(seed=0, recompute="none"),
        optim=optim,
        rollout=SimpleNamespace(temperature=TEMP, max_new_tokens=16),
        model_config=lambda: cfg,
    )
    critic = Critic(run_cfg)
    critic.build(ctx)
    with torch.no_grad():
        critic.model.score_head.weight.copy_(torch.linspace(-1, 1, cfg.hidden_size)[None])
        critic.model.score_head.bias.fill_(0.2)
    critic.start(model)
    run = _stand_in_run(run_cfg, ctx, model, opt, tp_group, critic=critic)
    batch = scenario["batches"][0]
    old, ref = _old_and_reference_logprobs(
        model, batch, scenario["shifts"][0], tp_group, micro_batch_size
    )
    metrics: dict[str, float] = {}
    result, _ = ppo_update(run, 0, batch, old, ref, metrics)
    out = {
        "metrics": {**metrics, **result.metrics, "loss": result.loss},
        "grads": grads_as_hf(model, cfg),
        "params": {k: v.detach().clone() for k, v in export_hf_state_dict(model, cfg).items()},
        "critic_grads": gather_canonical(critic.model, grads=True),
        "critic_params": gather_canonical(critic.model),
    }
    if tp > 1:
        out["tp_replica_spread"] = max(
            _tp_replica_spread(model, tp_group), _tp_replica_spread(critic.model, tp_group)
        )
    return out


@torch.no_grad()
def _tp_replica_spread(model, tp_group) -> float:
    """Largest difference between the TP ranks' copies of the weights TP replicates (the
    norms: the parameters megatron-core does not mark ``tensor_model_parallel``)."""
    import torch.distributed as dist

    flat = torch.cat(
        [
            p.detach().flatten()
            for p in model.parameters()
            if not getattr(p, "tensor_model_parallel", False)
        ]
    )
    copies = [torch.empty_like(flat) for _ in range(dist.get_world_size(tp_group))]
    dist.all_gather(copies, flat, group=tp_group)
    return max(float((c - copies[0]).abs().max()) for c in copies)


if __name__ == "__main__":
    import torch.distributed as dist

    from dsm_engine.models.parallel import destroy_parallel

    src, dst, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pp = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    data = torch.load(src, weights_only=False)
    planned = data.get("planned", {})
    if tp == pp == 1:  # data parallelism 2
        out = {}
        for key, scenario in planned.items():
            out[key] = planned_step_outputs(data["state"], scenario)
            destroy_parallel(keep_process_group=True)
        torch.save(out, f"{dst}.rank{dist.get_rank()}")
    else:
        out = grpo_step_outputs(data["state"], data["batch"], tp, pp=pp, updates=pp > 1)
        out["planned"] = {}
        for key, scenario in planned.items():
            destroy_parallel(keep_process_group=True)
            out["planned"][key] = planned_step_outputs(data["state"], scenario, tp=tp, pp=pp)
        if "ppo" in data:
            destroy_parallel(keep_process_group=True)
            out["ppo_sp"] = ppo_step_outputs(data["state"], data["ppo"], tp, sequence_parallel=True)
        out["planned_sp"] = {}
        for key, scenario in data.get("planned_sp", {}).items():
            destroy_parallel(keep_process_group=True)
            out["planned_sp"][key] = planned_step_outputs(
                data["state"], scenario, tp=tp, pp=pp, sequence_parallel=True
            )
        if dist.get_rank() == 0:
            torch.save(out, dst)
    destroy_parallel()
