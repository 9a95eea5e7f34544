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
under ``ppo`` the critic + its optimizer (``critic/``), the step, the data position, the iteration, the current reward-model checkpoint (whose own
checkpoint holds the replay buffer) and every rank's RNG states.

Other methods (``algorithm.name``, DeepSeekMath §5.2; each one's data source, reward and update
are listed in ``dsm_engine.grpo.config``) replace the advantages and the update by their
gradient coefficient (``dsm_engine.grpo.algorithms``, run by ``dsm_engine.grpo.planned``). What
the loop does differently for them: the offline ``rft`` and ``dpo`` load the sampler once with
π_sft (the reference) and never sync it, held-out evaluation lends it the policy; ``sft``
samples nothing (its rows are gold solutions, ``dsm_engine.grpo.gold``); ``ppo`` adds the
critic (``dsm_engine.grpo.ppo``). A step whose coefficient keeps no row skips the update and
logs ``update_skipped=1``.

The shell (parallel setup, run folder, resume, checkpoint cadence, logging, profiling) is the
:class:`~dsm_engine.trainers.session.TrainingSession`'s; :class:`GRPORun` adds the reference,
the sampler and the reward, and its ``step`` is the loop body in small parts (rollout,
log-probs, advantages, updates) that other post-training algorithms can reuse.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

from dsm_engine.config import ConfigError
from dsm_engine.grpo.config import (
    GOLD_ALGORITHMS,
    OFFLINE_ALGORITHMS,
    GRPOAlgoConfig,
    GRPOConfig,
    iteration_of,
)
from dsm_engine.grpo.data import PromptDataset
from dsm_engine.grpo.gold import gold_rollout
from dsm_engine.grpo.planned import planned_update
from dsm_engine.grpo.ppo import Critic, ppo_update
from dsm_engine.grpo.rm_refresh import RewardModelRefresher, reward_model_scorer
from dsm_engine.grpo.sampling import (
    evaluate_greedy,
    evaluate_sampled,
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
from dsm_engine.grpo.step_report import response_metrics, rollout_metrics, step_work
from dsm_engine.reward_models.grpo_rewards import compute_advantages
from dsm_engine.rollout.base import SamplingParams
from dsm_engine.rollout.factory import build_rollout_engine
from dsm_engine.text_codec import TextCodec
from dsm_engine.trainers.optim import grad_finalizer
from dsm_engine.trainers.schedules import apply_lr, lr_at
from dsm_engine.trainers.session import (
    CheckpointHooks,
    SessionOptions,
    StepHook,
    StepResult,
    TrainingSession,
    dp_mean,
)

REFERENCE_DIR = "reference"


class GRPORun:
    """One GRPO run on its :class:`TrainingSession`: the reference, the sampler, the reward
    (and its refresher) and the data position. :meth:`step` is the loop body, in parts a new
    algorithm can reuse or replace: :meth:`new_iteration`, :meth:`rollout`, :meth:`logprobs`,
    :meth:`advantages`, :meth:`update`, then the weight sync."""

    def __init__(
        self,
        cfg: GRPOConfig,
        session: TrainingSession,
        codec: TextCodec,
        dataset: PromptDataset,
        eval_set: PromptDataset | None,
    ) -> None:
        self.cfg, self.session, self.codec = cfg, session, codec
        self.dataset, self.eval_set = dataset, eval_set
        self.model_cfg = cfg.model_config()
        self.ctx = ctx = session.ctx
        self.local_prompts = cfg.grpo.prompts_per_step // ctx.dp_size
        self.position = 0  # prompts consumed so far
        self.reference: torch.nn.Module | None = None
        self.rm_refresh = RewardModelRefresher(cfg, session.run.path, codec, dataset)
        self.rm_refresh.check(ctx.dp_size)
        self.tp_group = ctx.tp_group if ctx.tp_size > 1 else None
        # Rows are padded to a multiple of 16 tokens: a few distinct shapes, so the compiled
        # fusions of the model (torch.compile) are not rebuilt for every new response length.
        self.multiple_of = math.lcm(16, ctx.tp_size if cfg.parallel.sequence_parallel else 1)
        self.engine: Any = None
        self.tools: Any = None
        # rft / dpo sample from π_sft: the sampler keeps the initial weights
        self.offline = cfg.algorithm.name in OFFLINE_ALGORITHMS
        # sft trains on the gold solutions: the sampler serves evaluation only
        self.gold = cfg.algorithm.name in GOLD_ALGORITHMS
        self.critic = Critic(cfg) if cfg.algorithm.name == "ppo" else None

    # -- models and checkpoints ---------------------------------------------------------------

    def build(self, ctx) -> list[torch.nn.Module]:
        """The session's builder: the policy (trained) and, beside it, the frozen reference
        (and under ppo the critic with its own optimizer)."""
        from dsm_engine.models.build import build_model, set_activation_recompute

        policy = build_model(self.model_cfg, ctx)
        set_activation_recompute([policy], self.cfg.train.recompute)
        self.reference = build_model(self.model_cfg, ctx, init_weights=False)
        self.reference.requires_grad_(False).eval()
        if self.critic is not None:
            self.critic.build(ctx)
        return [policy]

    @property
    def policy(self) -> torch.nn.Module:
        return self.session.chunks[0]

    def hooks(self) -> CheckpointHooks:
        """GRPO's part of the checkpoints: data position, iteration, reward model, reference
        (and the critic with its optimizer)."""
        return CheckpointHooks(
            state=lambda done: {
                "position": self.position,
                "iteration": iteration_of(done - 1, self.cfg),
                **self.rm_refresh.state(),
            },
            restore=self._restore,
            fresh=self._fresh,
            save_more=self._save_more,
        )

    def _restore(self, extra: dict[str, Any]) -> None:
        from dsm_engine.models.checkpoint import load_checkpoint

        self.position = int(extra["position"])
        step = int(extra["step"])
        load_checkpoint(self.session.run.path / REFERENCE_DIR, self.reference, step=step)
        if self.critic is not None:
            self.critic.restore(self.session.run.path, step)
        self.rm_refresh.load_state(extra)

    def _fresh(self) -> None:
        from dsm_engine.models.build import copy_weights
        from dsm_engine.models.checkpoint import load_checkpoint

        if self.cfg.checkpoint.load:
            load_checkpoint(self.cfg.checkpoint.load, self.policy)
        copy_weights(self.reference, self.policy)
        if self.critic is not None:
            self.critic.start(self.policy)

    def _save_more(self, done: int) -> None:
        from dsm_engine.models.checkpoint import save_checkpoint

        self.offload(self.reference, self.ctx.device)
        save_checkpoint(self.session.run.path / REFERENCE_DIR, done, self.reference)
        self.offload(self.reference, torch.device("cpu"))
        if self.critic is not None:
            self.critic.save(self.session.run.path, done)

    def offload(self, model: torch.nn.Module, where: torch.device) -> None:
        if self.cfg.reference.offload_to_cpu and self.ctx.device.type != "cpu":
            model.to(where)

    # -- sampler and reward -------------------------------------------------------------------

    def start_sampler(self) -> None:
        """The rollout engine (on sampler ranks), the reward, the reference moved off the
        device, and the sampler holding the policy's weights."""
        from dsm_engine.models.convert import hf_config
        from dsm_engine.rewards import build_reward_fn

        cfg, codec = self.cfg, self.codec
        if is_sampler_rank() and (not self.gold or self.eval_set is not None):
            self.tools = tool_options(cfg.rollout, codec)
            self.engine = build_rollout_engine(
                cfg.rollout.backend,
                hf_config(self.model_cfg),
                pad_token_id=codec.pad_id,
                max_batch_rows=cfg.rollout.max_batch_rows,
                tools=self.tools,
            )
        self.reward_fn = build_reward_fn(
            cfg.reward.name, kind=cfg.reward.kind, timeout_s=cfg.reward.timeout_s
        )
        self.rm_scorer = reward_model_scorer(cfg, self.rm_refresh.path, self.ctx)
        if self.offline:  # π_sft: the reference is the initial policy, restored on resume
            sync_weights(self.reference, self.engine, self.model_cfg)
        self.offload(self.reference, torch.device("cpu"))
        if not (self.offline or self.gold):
            sync_weights(self.policy, self.engine, self.model_cfg)

    def _sampler_holds_sft(self) -> None:
        """Load π_sft (the reference) back into the sampler of an offline method."""
        self.offload(self.reference, self.ctx.device)
        sync_weights(self.reference, self.engine, self.model_cfg)
        self.offload(self.reference, torch.device("cpu"))

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy of the policy on the first ``eval.num_prompts`` prompts: greedy
        (``eval_accuracy``) and, with ``eval.samples``, sampled (``eval_sampled_accuracy``).
        An offline method's sampler holds π_sft: it gets the policy for the evaluation; sft's
        sampler gets it then only."""
        assert self.eval_set is not None
        if self.gold:
            sync_weights(self.policy, self.engine, self.model_cfg)
        elif self.offline:
            sync_weights(self.policy, self.engine, self.model_cfg)
            try:
                return self._evaluate()
            finally:
                self._sampler_holds_sft()
        return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        assert self.eval_set is not None
        ev, rollout = self.cfg.eval, self.cfg.rollout
        prompts = self.eval_set.prompts[: ev.num_prompts]
        args = (self.engine, self.reward_fn, self.codec, prompts)
        out = {
            "eval_accuracy": evaluate_greedy(
                *args, max_new_tokens=ev.max_new_tokens, temperature=rollout.temperature
            )
        }
        if ev.samples:
            out["eval_sampled_accuracy"] = evaluate_sampled(
                *args,
                samples=ev.samples,
                max_new_tokens=ev.max_new_tokens,
                temperature=rollout.temperature,
                seed=self.cfg.train.seed,
            )
        return out

    # -- the step, in parts -------------------------------------------------------------------

    def new_iteration(self, step: int) -> dict[str, float]:
        """At an iteration boundary: π_ref ← π_θ, and under iterative RL the reward model is
        continued and the scorer switched to it. Returns the refresher's metrics."""
        from dsm_engine.models.build import copy_weights

        phase = self.session.phase
        if step == 0 or iteration_of(step, self.cfg) == iteration_of(step - 1, self.cfg):
            return {}
        with phase("reference_update"):
            copy_weights(self.reference, self.policy)
        if not self.rm_refresh.enabled:
            return {}
        self.rm_scorer = None  # free the old one before training the next
        with phase("rm_refresh"):
            metrics = self.rm_refresh.refresh(
                step,
                iteration_of(step, self.cfg),
                self.position,
                self.engine,
                dp_rank=self.ctx.dp_rank,
                dp_size=self.ctx.dp_size,
            )
            self.rm_scorer = reward_model_scorer(self.cfg, self.rm_refresh.path, self.ctx)
        return metrics

    def rollout(self, step: int) -> tuple[Any, Any]:
        """This rank's prompts of the step, ``group_size`` scored responses each (sft: the
        gold solution of each): the rollout and its batch on the device."""
        cfg, g, ctx, prof = self.cfg, self.cfg.grpo, self.ctx, self.session.prof
        prompts = self.dataset.batch(self.position, g.prompts_per_step)
        mine = prompts[ctx.dp_rank * self.local_prompts : (ctx.dp_rank + 1) * self.local_prompts]
        if self.gold:
            with prof.phase("rollout"):
                ro = gold_rollout(
                    self.codec,
                    mine,
                    max_new_tokens=cfg.rollout.max_new_tokens,
                    multiple_of=self.multiple_of,
                )
                return ro, ro.batch.to(ctx.device)
        params = SamplingParams(
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            max_new_tokens=cfg.rollout.max_new_tokens,
            stop_token_ids=[self.codec.eos_id],
            seed=cfg.train.seed * 100_003 + step * 1_009 + ctx.dp_rank,
        )
        with prof.phase("rollout"):
            ro = rollout_and_score(
                self.engine,
                self.reward_fn,
                self.codec,
                mine,
                g.group_size,
                params,
                multiple_of=self.multiple_of,
            )
            batch = ro.batch.to(ctx.device)
        # rollout_and_score times its generation and verifier itself; the rest is packing
        parts = [("generation", ro.rollout_s), ("verifier", ro.reward_s)]
        prof.split_last("rollout", parts, rest="rollout_batch")
        return ro, batch

    def logprobs(self, batch: Any, metrics: dict[str, float]) -> tuple[Any, Any, float, float]:
        """(reference, old) log-probs of the responses and the seconds each took; the policy's
        entropy and its mismatch with the sampler go to ``metrics`` when recomputed."""
        g, temp, phase = self.cfg.grpo, self.cfg.rollout.temperature, self.session.phase
        t0 = time.perf_counter()
        with phase("reference_logprobs"):
            self.offload(self.reference, self.ctx.device)
            ref_logp, _ = sequence_logprobs(
                self.reference,
                batch.tokens,
                batch.targets,
                temperature=temp,
                tp_group=self.tp_group,
                micro_batch_size=g.micro_batch_size,
                impl=g.impl,
                mask=batch.mask,
            )
            self.offload(self.reference, torch.device("cpu"))
        t1 = time.perf_counter()
        with phase("old_logprobs"):
            if g.old_logp == "recompute":
                old_logp, ent = sequence_logprobs(
                    self.policy,
                    batch.tokens,
                    batch.targets,
                    temperature=temp,
                    tp_group=self.tp_group,
                    micro_batch_size=g.micro_batch_size,
                    return_entropy=True,
                    impl=g.impl,
                    mask=batch.mask,
                )
                if not self.gold:  # gold rows have no sampler log-probs
                    metrics.update(mismatch_metrics(old_logp, batch.sampler_logp, batch.mask))
                metrics["entropy"] = float(ent[batch.mask].mean())
            else:
                old_logp = batch.sampler_logp
        return ref_logp, old_logp, t1 - t0, time.perf_counter() - t1

    def advantages(self, batch: Any, old_logp: Any, metrics: dict[str, float]) -> Any:
        """Per-token advantages (reward models score here); their metrics and the truncated
        importance sampling's go to ``metrics``."""
        cfg, g = self.cfg, self.cfg.grpo
        with self.session.phase("advantages"):
            adv, rm_metrics = compute_advantages(
                cfg.reward.supervision,
                batch,
                g.group_size,
                scorer=self.rm_scorer,
                decode=self.codec.decode,
                delimiter=cfg.reward.delimiter,
                prm_weight=cfg.reward.prm_weight,
                impl=g.impl,
            )
            metrics.update(rm_metrics)
            adv_tok, tis = token_advantages(
                adv, old_logp, batch.sampler_logp, batch.mask, g.tis_cap
            )
        return adv_tok, tis

    def update(
        self,
        batch: Any,
        old_logp: Any,
        ref_logp: Any,
        adv_tok: Any,
        config: GRPOAlgoConfig | None = None,
    ) -> Any:
        """μ updates of the clipped, KL-penalised objective (times its own phases);
        ``config``: the loss settings (default ``grpo``'s)."""
        s = self.session
        return grpo_updates(
            self.policy,
            s.opt,
            s.zero_grad,
            batch,
            old_logp,
            ref_logp,
            adv_tok,
            config or self.cfg.grpo,
            temperature=self.cfg.rollout.temperature,
            max_len=self.cfg.rollout.max_new_tokens,
            tp_group=self.tp_group,
            finalize_grads=grad_finalizer(self.cfg.optim, [self.policy]),
            phase=s.phase,
        )

    def step(self, step: int) -> StepResult:
        """GRPO step ``step`` (0-based): the session's step function."""
        cfg, g, ctx, s = self.cfg, self.cfg.grpo, self.ctx, self.session
        refresh_metrics = self.new_iteration(step)
        tic = time.perf_counter()
        lr = lr_at(cfg.schedule, step, g.steps)
        apply_lr(s.opt, lr)
        ro, batch = self.rollout(step)
        metrics: dict[str, float] = {}
        ref_logp, old_logp, ref_s, old_s = self.logprobs(batch, metrics)
        t2 = time.perf_counter()
        if cfg.algorithm.name == "grpo":
            adv_tok, tis = self.advantages(batch, old_logp, metrics)
            upd = self.update(batch, old_logp, ref_logp, adv_tok)
        elif self.critic is not None:
            upd, tis = ppo_update(self, step, batch, old_logp, ref_logp, metrics)
        else:
            upd, tis = planned_update(self, step, batch, old_logp, ref_logp, metrics)
        metrics.update(refresh_metrics)
        t3 = time.perf_counter()
        sync_s = 0.0
        if not (self.offline or self.gold):  # offline methods keep sampling from π_sft
            with s.phase("weight_sync"):
                sync_s = sync_weights(self.policy, self.engine, self.model_cfg)
        done = step + 1
        self.position += g.prompts_per_step
        secs = time.perf_counter() - tic
        tokens = float((batch.tokens != self.codec.pad_id).sum() + batch.mask.sum())
        metrics.update(response_metrics(batch) if self.gold else rollout_metrics(ro, g.group_size))
        metrics.update(tis)
        metrics.update(upd.metrics)
        metrics.update(
            loss=upd.loss,
            grad_norm=upd.grad_norm,
            lr=lr,
            iteration=float(iteration_of(step, cfg)),
            time_rollout_s=ro.rollout_s,
            time_reward_s=ro.reward_s,
            time_reference_s=ref_s,
            time_old_s=old_s,
            time_update_s=t3 - t2,
            time_sync_s=sync_s,
            step_time_s=secs,
            tokens_per_s=tokens / secs,
        )
        metrics = dp_mean(metrics, ctx.dp_group)
        if self.eval_set is not None and (done % cfg.eval.every == 0 or done == g.steps):
            with s.phase("eval"):
                metrics.update(self.evaluate())
        work = step_work(batch, self.codec.pad_id, self.model_cfg, cfg, ctx.dp_size)
        return StepResult(metrics, work)


def run_grpo(cfg: GRPOConfig, *, on_step_end: StepHook | None = None) -> list[dict[str, float]]:
    """Train (or resume) per ``cfg``; returns the metrics of every step this call ran."""
    g, model_cfg = cfg.grpo, cfg.model_config()
    codec = TextCodec(cfg.data.tokenizer)
    if codec.vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{codec.vocab_size} tokens ({cfg.data.tokenizer})"
        )
    dataset = PromptDataset(cfg.data, codec, solutions=cfg.algorithm.name in GOLD_ALGORITHMS)
    eval_set = PromptDataset(cfg.data, codec, path=cfg.eval.path) if cfg.eval.every else None

    opts = SessionOptions(
        total_steps=g.steps,
        description="grpo",
        tokenizer=cfg.data.tokenizer,
        show=("reward_mean", "kl_mean", "eval_accuracy", "tokens_per_s"),
        log_every_step=True,
        mean_profile_over_dp=True,
    )
    session = TrainingSession(cfg, opts)
    if g.prompts_per_step % session.ctx.dp_size:
        raise ConfigError(
            f"grpo.prompts_per_step={g.prompts_per_step} is not divisible by the "
            f"data-parallel size {session.ctx.dp_size}"
        )
    with session:  # the run folder stays locked until the run ends
        run = GRPORun(cfg, session, codec, dataset, eval_set)
        session.build(run.build)
        start = session.resume(run.hooks())
        run.start_sampler()
        if run.tools is not None:
            session.keep(run.tools.sandbox)
        if isinstance(run.reward_fn, contextlib.AbstractContextManager):
            session.keep(run.reward_fn)  # the verifier's checker processes stop with the run
        if eval_set is not None and start == 0:
            session.log.log(0, run.evaluate())
        return session.drive(run.step, on_step_end)
