"""The GRPO loop (paper §4.1, Algorithm 1) on megatron-core models.

    for iteration k:                      π_ref ← π_θ
      for each step:
        sample prompts; π_old ← π_θ       (the sampler gets the current weights)
        sample G responses per prompt; score them with the reward
        advantages = group-normalised rewards (verifier), ORM scores, or per-token PRM
          process advantages (reward.supervision; compute_advantages of reward_models)
        old log-probs (recomputed, or the sampler's when μ = 1 and exactly on-policy),
        reference log-probs (frozen model)
        μ updates of the clipped, k3-KL-penalised objective (fused_linear_grpo_loss)
        sync weights into the sampler (in memory)

Iterative RL (§4.1.4; ``rm_update.steps > 0`` with a learned ``reward.supervision``): at each
iteration boundary, before the next iteration's first step, the reward model is continued on
newly sampled, verifier-labelled (and for prm / mixed Monte-Carlo step-labelled) responses of
the current policy, with ``rm_update.replay_ratio`` (10%) of every reward-model batch drawn from
the replay buffer of earlier labels; the scorer then switches to the new reward model
(``dsm_engine.grpo.rm_refresh``: rank layout, files under ``<run_dir>/reward_model/``). Its
metrics join the first step of the new iteration with an ``rm_`` prefix.

Parallelism: tensor, pipeline and data parallel (``parallel.tp`` / ``pp``; no virtual pp).
Log-probs and updates run through megatron-core's pipeline schedule (``grpo.step``); the
sampler lives on the first rank of each tp x pp group, which receives the whole policy after
every update and shares its scored rollouts with its peers (``grpo.sampling``).

Checkpoints hold the policy + optimizer (``checkpoints/``), the reference (``reference/``),
the step, the data position, the iteration, the current reward-model checkpoint (whose own
checkpoint holds the replay buffer) and every rank's RNG states.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from dsm_engine.config import ConfigError
from dsm_engine.grpo.config import GRPOConfig
from dsm_engine.grpo.data import PromptDataset
from dsm_engine.grpo.rm_refresh import RewardModelRefresher
from dsm_engine.grpo.sampling import (
    evaluate_greedy,
    is_sampler_rank,
    rollout_and_score,
    sync_weights,
    tool_options,
)
from dsm_engine.grpo.step import (
    grpo_updates,
    mismatch_metrics,
    sequence_logprobs,
    token_advantages,
)
from dsm_engine.reward_models.grpo_rewards import compute_advantages
from dsm_engine.reward_models.scorer import MeanScorer, TokenScorer, load_reward_fn
from dsm_engine.rollout.base import SamplingParams, build_rollout_engine
from dsm_engine.text_codec import TextCodec
from dsm_engine.trainers.flops import train_flops_per_token
from dsm_engine.trainers.profiling import StepProfiler, StepWork

StepHook = Callable[[int, dict[str, float]], None]
REFERENCE_DIR = "reference"


def iteration_of(step: int, cfg: GRPOConfig) -> int:
    """The outer iteration that GRPO step ``step`` (0-based) belongs to."""
    per = cfg.grpo.steps // cfg.grpo.iterations
    return min(step // per, cfg.grpo.iterations - 1)


@torch.no_grad()
def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """π_ref ← π_θ: copy every parameter of ``src`` into ``dst`` (same layout)."""
    from dsm_engine.models.build import _unwrap

    d, s = _unwrap(dst).state_dict(), _unwrap(src).state_dict()
    for k, v in s.items():
        if torch.is_tensor(v) and k in d and torch.is_tensor(d[k]):
            d[k].copy_(v)


def _dp_mean(values: dict[str, float], group) -> dict[str, float]:
    if dist.get_world_size(group) == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    t /= dist.get_world_size(group)
    return dict(zip(keys, t.tolist()))


def _rollout_metrics(ro, group_size: int) -> dict[str, float]:
    b = ro.batch
    r = b.rewards.view(-1, group_size)
    lens = b.response_len.float()
    return {
        "reward_mean": float(b.rewards.mean()),
        "reward_std": float(b.rewards.std(unbiased=False)),
        "accuracy": sum(ro.correct) / len(ro.correct),
        "zero_var_group_frac": float((r.std(dim=1, unbiased=False) == 0).float().mean()),
        "response_len_mean": float(lens.mean()),
        "response_len_max": float(lens.max()),
        "truncated_frac": float((~b.finished).float().mean()),
        **ro.tool,
    }


def _step_work(batch, pad_id: int, model_cfg, cfg: GRPOConfig, dp_size: int) -> StepWork:
    """The step's tokens and model FLOPs for the whole job (this rank's rows × ``dp_size``):
    μ forward + backward passes over the rows, the reference (and recomputed old) log-prob
    forwards, and one forward per generated token (a forward is a third of training's cost)."""
    fwd = train_flops_per_token(model_cfg, seq_length=batch.tokens.shape[1]) / 3
    rows = float((batch.tokens != pad_id).sum()) * dp_size
    gen = float(batch.mask.sum()) * dp_size
    train = rows * cfg.grpo.mu
    passes = 1 + (cfg.grpo.old_logp == "recompute")
    step_flops = 3 * fwd * train + fwd * rows * passes + fwd * gen
    return StepWork(train_tokens=train, train_flops=3 * fwd * train, step_flops=step_flops,
                    gen_tokens=gen)  # fmt: skip


def _reward_model_scorer(cfg: GRPOConfig, model_path: str) -> TokenScorer | None:
    """The learned reward model's scorer (None under verifier supervision; the mean of the
    members with ``reward.ensemble``), in the policy's TP/PP layout: scoring is collective over
    the model-parallel group, whose ranks hold the same rollout rows; each data-parallel rank
    scores its own rows."""
    if cfg.reward.supervision == "verifier":
        return None
    kind = "orm" if cfg.reward.supervision == "orm" else "prm"
    scorers = [
        load_reward_fn(
            kind,
            path,
            cfg.data.tokenizer,
            delimiter=cfg.reward.delimiter,
            micro_batch_size=cfg.grpo.micro_batch_size,
        ).scorer
        for path in [model_path, *cfg.reward.ensemble]
    ]
    return scorers[0] if len(scorers) == 1 else MeanScorer(scorers)


def run_grpo(cfg: GRPOConfig, *, on_step_end: StepHook | None = None) -> list[dict[str, float]]:
    """Train (or resume) per ``cfg``; returns the metrics of every step this call ran."""
    from dsm_engine.models.build import build_model
    from dsm_engine.models.checkpoint import load_checkpoint, save_checkpoint
    from dsm_engine.models.convert import hf_config
    from dsm_engine.models.parallel import initialize_parallel
    from dsm_engine.rewards import build_reward_fn
    from dsm_engine.trainers.rng import rng_states, set_rng_states
    from dsm_engine.trainers.metrics import MetricsLogger
    from dsm_engine.trainers.optim import wrap_and_build_optimizer
    from dsm_engine.trainers.run_dir import prepare_run_dir
    from dsm_engine.trainers.schedules import apply_lr, lr_at

    g, model_cfg = cfg.grpo, cfg.model_config()
    if cfg.parallel.virtual_pp:
        raise ConfigError(
            "parallel.virtual_pp: the GRPO trainer runs the plain 1F1B pipeline schedule "
            "(set parallel.pp alone)"
        )
    codec = TextCodec(cfg.data.tokenizer)
    if codec.vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{codec.vocab_size} tokens ({cfg.data.tokenizer})"
        )
    dataset = PromptDataset(cfg.data, codec)
    eval_set = PromptDataset(cfg.data, codec, path=cfg.eval.path) if cfg.eval.every else None

    ctx = initialize_parallel(cfg.parallel, seed=cfg.train.seed)
    if g.prompts_per_step % ctx.dp_size:
        raise ConfigError(
            f"grpo.prompts_per_step={g.prompts_per_step} is not divisible by the "
            f"data-parallel size {ctx.dp_size}"
        )
    local_prompts = g.prompts_per_step // ctx.dp_size
    run = prepare_run_dir(
        cfg.run_dir, cfg, overwrite=cfg.overwrite, resume=cfg.resume, tokenizer=cfg.data.tokenizer
    )
    rm_refresh = RewardModelRefresher(cfg, run.path, codec, dataset)
    rm_refresh.check(ctx.dp_size)

    policy = build_model(model_cfg, ctx)
    reference = build_model(model_cfg, ctx, init_weights=False)
    reference.requires_grad_(False).eval()
    bf16 = model_cfg.params_dtype == "bfloat16"
    chunks, opt, zero_grad = wrap_and_build_optimizer([policy], cfg.optim, bf16=bf16)
    policy = chunks[0]
    finalize = None
    if cfg.optim.backend == "megatron":
        from megatron.core.distributed import finalize_model_grads

        finalize = lambda: finalize_model_grads(chunks)  # noqa: E731

    step, position = 0, 0
    if run.resume_from is not None:
        extra = load_checkpoint(run.resume_from, policy, optimizer=opt)
        step, position = int(extra["step"]), int(extra["position"])
        load_checkpoint(run.path / REFERENCE_DIR, reference, step=step)
        set_rng_states(extra["rng"])
        rm_refresh.load_state(extra)
    else:
        if cfg.checkpoint.load:
            load_checkpoint(cfg.checkpoint.load, policy)
        copy_weights(reference, policy)

    engine, tools = None, None
    if is_sampler_rank():
        tools = tool_options(cfg.rollout, codec)
        engine = build_rollout_engine(
            cfg.rollout.backend,
            hf_config(model_cfg),
            pad_token_id=codec.pad_id,
            max_batch_rows=cfg.rollout.max_batch_rows,
            tools=tools,
        )
    reward_fn = build_reward_fn(
        cfg.reward.name, kind=cfg.reward.kind, timeout_s=cfg.reward.timeout_s
    )
    rm_scorer = _reward_model_scorer(cfg, rm_refresh.path)
    tp_group = ctx.tp_group if ctx.tp_size > 1 else None
    # Rows are padded to a multiple of 16 tokens: a few distinct shapes, so the compiled
    # fusions of the model (torch.compile) are not rebuilt for every new response length.
    multiple_of = math.lcm(16, ctx.tp_size if cfg.parallel.sequence_parallel else 1)
    temp = cfg.rollout.temperature
    device = ctx.device

    def offload(model: torch.nn.Module, where: torch.device) -> None:
        if cfg.reference.offload_to_cpu and device.type != "cpu":
            model.to(where)

    offload(reference, torch.device("cpu"))
    sync_weights(policy, engine, model_cfg)

    def evaluate() -> float:
        assert eval_set is not None
        return evaluate_greedy(
            engine,
            reward_fn,
            codec,
            eval_set.prompts[: cfg.eval.num_prompts],
            max_new_tokens=cfg.eval.max_new_tokens,
            temperature=temp,
        )

    history: list[dict[str, float]] = []
    log = MetricsLogger(
        run.path,
        total_steps=g.steps,
        start_step=step,
        enabled=ctx.rank == 0,
        tensorboard=cfg.logging.tensorboard,
        progress=cfg.logging.progress,
        description="grpo",
        show=("reward_mean", "kl_mean", "eval_accuracy", "tokens_per_s"),
    )
    prof = StepProfiler(
        cfg.profile, run_dir=run.path, device=device, rank=ctx.rank, start_step=step
    )
    sandbox = tools.sandbox if tools is not None else contextlib.nullcontext()
    with run, log, prof, sandbox:  # the run folder stays locked until the run ends
        if eval_set is not None and step == 0:
            log.log(0, {"eval_accuracy": evaluate()})
        while step < g.steps:
            prof.begin_step(step + 1)
            refresh_metrics: dict[str, float] = {}
            if step > 0 and iteration_of(step, cfg) != iteration_of(step - 1, cfg):
                with prof.phase("reference_update"):
                    copy_weights(reference, policy)  # a new iteration: π_ref ← π_θ
                if rm_refresh.enabled:  # iterative RL: continue the reward model, switch to it
                    rm_scorer = None  # free the old one before training the next
                    with prof.phase("rm_refresh"):
                        refresh_metrics = rm_refresh.refresh(
                            step,
                            iteration_of(step, cfg),
                            position,
                            engine,
                            dp_rank=ctx.dp_rank,
                            dp_size=ctx.dp_size,
                        )
                        rm_scorer = _reward_model_scorer(cfg, rm_refresh.path)
            tic = time.perf_counter()
            lr = lr_at(cfg.schedule, step, g.steps)
            apply_lr(opt, lr)
            prompts = dataset.batch(position, g.prompts_per_step)
            mine = prompts[ctx.dp_rank * local_prompts : (ctx.dp_rank + 1) * local_prompts]
            params = SamplingParams(
                temperature=temp,
                top_p=cfg.rollout.top_p,
                max_new_tokens=cfg.rollout.max_new_tokens,
                stop_token_ids=[codec.eos_id],
                seed=cfg.train.seed * 100_003 + step * 1_009 + ctx.dp_rank,
            )
            with prof.phase("rollout"):
                ro = rollout_and_score(
                    engine, reward_fn, codec, mine, g.group_size, params, multiple_of=multiple_of
                )
                batch = ro.batch.to(device)
            # rollout_and_score times its generation and verifier itself; the rest is packing
            parts = [("generation", ro.rollout_s), ("verifier", ro.reward_s)]
            prof.split_last("rollout", parts, rest="rollout_batch")

            t0 = time.perf_counter()
            with prof.phase("reference_logprobs"):
                offload(reference, device)
                ref_logp, _ = sequence_logprobs(
                    reference,
                    batch.tokens,
                    batch.targets,
                    temperature=temp,
                    tp_group=tp_group,
                    micro_batch_size=g.micro_batch_size,
                    impl=g.impl,
                )
                offload(reference, torch.device("cpu"))
            t1 = time.perf_counter()
            metrics: dict[str, float] = {}
            with prof.phase("old_logprobs"):
                if g.old_logp == "recompute":
                    old_logp, ent = sequence_logprobs(
                        policy,
                        batch.tokens,
                        batch.targets,
                        temperature=temp,
                        tp_group=tp_group,
                        micro_batch_size=g.micro_batch_size,
                        return_entropy=True,
                        impl=g.impl,
                    )
                    metrics.update(mismatch_metrics(old_logp, batch.sampler_logp, batch.mask))
                    metrics["entropy"] = float(ent[batch.mask].mean())
                else:
                    old_logp = batch.sampler_logp
            t2 = time.perf_counter()

            with prof.phase("advantages"):  # reward models score here
                adv, rm_metrics = compute_advantages(
                    cfg.reward.supervision,
                    batch,
                    g.group_size,
                    scorer=rm_scorer,
                    decode=codec.decode,
                    delimiter=cfg.reward.delimiter,
                    prm_weight=cfg.reward.prm_weight,
                    impl=g.impl,
                )
                metrics.update(rm_metrics)
                metrics.update(refresh_metrics)
                adv_tok, tis = token_advantages(
                    adv, old_logp, batch.sampler_logp, batch.mask, g.tis_cap
                )
            upd = grpo_updates(  # times its forward_backward and optimizer phases
                policy,
                opt,
                zero_grad,
                batch,
                old_logp,
                ref_logp,
                adv_tok,
                g,
                temperature=temp,
                max_len=cfg.rollout.max_new_tokens,
                tp_group=tp_group,
                finalize_grads=finalize,
                phase=prof.phase,
            )
            t3 = time.perf_counter()
            with prof.phase("weight_sync"):
                sync_s = sync_weights(policy, engine, model_cfg)
            step += 1
            position += g.prompts_per_step
            secs = time.perf_counter() - tic
            tokens = float((batch.tokens != codec.pad_id).sum() + batch.mask.sum())

            metrics.update(_rollout_metrics(ro, g.group_size))
            metrics.update(tis)
            metrics.update(upd.metrics)
            metrics.update(
                loss=upd.loss,
                grad_norm=upd.grad_norm,
                lr=lr,
                iteration=float(iteration_of(step - 1, cfg)),
                time_rollout_s=ro.rollout_s,
                time_reward_s=ro.reward_s,
                time_reference_s=t1 - t0,
                time_old_s=t2 - t1,
                time_update_s=t3 - t2,
                time_sync_s=sync_s,
                step_time_s=secs,
                tokens_per_s=tokens / secs,
            )
            metrics = _dp_mean(metrics, ctx.dp_group)
            if eval_set is not None and (step % cfg.eval.every == 0 or step == g.steps):
                with prof.phase("eval"):
                    metrics["eval_accuracy"] = evaluate()
            if step % cfg.checkpoint.every == 0 or step == g.steps:
                extra: dict[str, Any] = {
                    "step": step,
                    "position": position,
                    "iteration": iteration_of(step - 1, cfg),
                    "rng": rng_states(),
                    **rm_refresh.state(),
                }
                with prof.phase("checkpoint"):
                    offload(reference, device)
                    save_checkpoint(run.path / REFERENCE_DIR, step, reference)
                    offload(reference, torch.device("cpu"))
                    save_checkpoint(run.checkpoints, step, policy, optimizer=opt, extra=extra)
            work = _step_work(batch, codec.pad_id, model_cfg, cfg, ctx.dp_size)
            metrics.update(_dp_mean(prof.end_step(work, num_devices=ctx.world_size), ctx.dp_group))
            log.log(step, metrics)
            history.append(metrics)
            if on_step_end is not None:
                on_step_end(step, metrics)
    return history
