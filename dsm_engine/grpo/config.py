"""Typed config of ``dsm train grpo``: the shared run sections plus GRPO's own.

YAML layout (every key optional; ``key=value`` overrides any of them)::

    model: {preset: tiny}            # the policy architecture (shared with the other trainers)
    parallel: {tp: 1, pp: 1}
    optim / schedule / checkpoint / logging   # as in pretraining; train.seed seeds everything
    grpo: {group_size, prompts_per_step, steps, mu, beta, clip_eps_low, ...}
    rollout: {backend, temperature, top_p, max_new_tokens, tools, tool_max_rounds, ...}
    data: {path, template, tokenizer, ...}
    reward: {name, kind, supervision, model_path, ...}
    rm_update: {steps, prompts, samples, ...}   # iterative RL: the reward model between iterations
    reference: {offload_to_cpu}
    eval: {path, every, num_prompts, max_new_tokens, samples}
    algorithm: {name, dpo_beta, pairs_per_prompt, correct_threshold, gamma, lam, ...}
    critic: {lr, load}               # ppo's value model

``algorithm.name`` picks the post-training method of the loop (DeepSeekMath §5.2, Table 10;
``dsm_engine.grpo.algorithms``); the default ``grpo`` is the loop as it always was:

    grpo        online samples, group-normalised rewards (or reward.supervision's learned
                outcome / process advantages), clipped k3-KL-penalised objective, μ updates
    rloo        online, leave-one-out baseline ``r_i - mean_{j≠i} r_j`` (grpo.group_size >= 2)
    dr_grpo     online, ``r - mean`` with no std and no 1/|o| length normalisation
    online_rft  online, SFT on the correct samples of the current policy (GC = I(o))
    rft         offline: SFT on the correct samples of π_sft (the sampler keeps the initial
                weights and is never synced with the updated policy)
    dpo         offline: pairs (correct, wrong) of π_sft's samples of one prompt, labelled by
                the verifier; the DPO loss (algorithm.dpo_beta) against the frozen reference
    ppo         online, with a value model (``critic:``, its own optimizer): per-token rewards
                (the verifier's at the last token minus grpo.beta × the KL to the reference,
                paper eq. 2), GAE (algorithm.gamma, lam) advantages for the clipped surrogate,
                then a clipped value-loss update of the critic (algorithm.value_clip)

    sft         offline, no sampling and no reward: the gold solution of every prompt
                (``data.solution_field`` of ``data.path``, tokenised after the prompt with the
                same codec, then the end token) with GC = 1 on its tokens, the mean
                log-likelihood of the solutions (grpo.loss_agg=token-mean: over all their
                tokens, as ``dsm train sft``); logs ``nll``, the policy's mean token NLL on the
                step's solutions before its update

``sft``, ``rft``, ``online_rft`` and ``dpo`` need grpo.mu=1 and grpo.old_logp=recompute (their
gradient coefficient holds for one update on the current policy's log-probs); the offline
methods need grpo.iterations=1 (the reference and the sampler stay π_sft), no grpo.tis_cap;
``sft`` needs grpo.group_size=1 (one gold solution per prompt). Learned reward supervision
(reward.supervision, rm_update) is GRPO's only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from dsm_engine.config import ConfigError
from dsm_engine.trainers.config import RunConfig

COT_TEMPLATE = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)


AlgorithmName = Literal["sft", "rft", "online_rft", "dpo", "ppo", "grpo", "rloo", "dr_grpo"]
# The methods GRPORun runs (all of them).
LOOP_ALGORITHMS = ("grpo", "online_rft", "rloo", "dr_grpo", "rft", "dpo", "ppo", "sft")
# Offline methods sample from π_sft: the sampler keeps the initial weights.
OFFLINE_ALGORITHMS = ("rft", "dpo")
# Methods trained on the data's gold solutions: no sampling, no reward (the sampler and the
# reward serve held-out evaluation only).
GOLD_ALGORITHMS = ("sft",)
# Methods whose gradient coefficient holds for one update on the current policy's log-probs.
SINGLE_UPDATE_ALGORITHMS = ("sft", "rft", "online_rft", "dpo")


@dataclass
class AlgorithmConfig:
    """``algorithm:`` the post-training method and its own constants.

    name: the method (``ALGORITHMS``). gamma, lam: GAE's discount and λ (``ppo``).
    value_clip: ε of the critic's clipped value loss (``ppo``). dpo_beta: β of the DPO loss.
    pairs_per_prompt: DPO pairs drawn per group with both labels.
    correct_threshold: a sample is correct (``I(o) = 1``) when its reward is at least this
    (the verifier gives 1 or 0).
    """

    name: AlgorithmName = "grpo"
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float = 0.2
    dpo_beta: float = 0.1
    pairs_per_prompt: int = 1
    correct_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in get_args(AlgorithmName):
            raise ConfigError(
                f"algorithm.name: {self.name!r} is not one of {list(get_args(AlgorithmName))}"
            )
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"algorithm.{name} must be in [0, 1], got {value}")
        for name in ("value_clip", "dpo_beta"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"algorithm.{name} must be a finite number > 0, got {value}")
        if self.pairs_per_prompt < 1:
            raise ConfigError(
                f"algorithm.pairs_per_prompt must be >= 1, got {self.pairs_per_prompt}"
            )


@dataclass
class CriticConfig:
    """``critic:`` PPO's value model (``algorithm.name: ppo``), trained beside the policy with
    its own optimizer (``optim``'s settings) and checkpointed with the run (``critic/``).

    lr: its peak learning rate under ``schedule``'s shape (None: ``schedule.lr``).
    load: a reward-model checkpoint (``dsm train rm``, the policy's architecture) whose backbone
    and score head start the critic; empty: the policy's initial weights (``checkpoint.load``)
    and a fresh score head.
    """

    lr: float | None = None
    load: str = ""

    def __post_init__(self) -> None:
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"critic.lr must be a finite number > 0 (or null), got {self.lr}")


@dataclass
class GRPOAlgoConfig:
    """The algorithm (paper §4.1, Algorithm 1).

    steps: GRPO steps in all (across iterations). iterations: outer loops; each sets
    π_ref ← π_θ and runs ``steps // iterations`` steps (the last takes the remainder).
    prompts_per_step × group_size responses per step (the paper: 16 × 64 = 1,024).
    mu: policy updates per rollout batch (the paper: 1). micro_batch_size: responses per
    forward/backward. loss_agg: see ``dsm_engine.kernels.grpo_loss``.
    old_logp: ``recompute`` runs the policy before the updates; ``rollout`` reuses the
    sampler's log-probs as π_old (valid only when mu = 1 and the sampler holds the current
    weights, i.e. exactly on-policy; the mismatch is then not measured).
    tis_cap: truncated importance sampling: the policy-gradient term of each token is weighted
    by ``min(π_old / π_sampler, tis_cap)`` (None: off).
    grad_weight_accum: how the fused loss sums the lm_head weight's gradient over token chunks
    (``dsm_engine.kernels.fused_linear_grpo_loss``): ``main_grad`` adds it straight into
    megatron DDP's fp32 ``main_grad`` (no extra memory, fp32 accuracy; ``optim.backend:
    megatron``), ``fp32`` rounds once like PyTorch (a V_local × H fp32 buffer while the loss
    runs), ``param`` in the weight's dtype (no extra memory), ``auto`` main_grad when the
    weight has one, else fp32 for bf16/fp16 weights split into several chunks.
    """

    steps: int = 100
    iterations: int = 1
    prompts_per_step: int = 16
    group_size: int = 64
    mu: int = 1
    micro_batch_size: int = 64
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    beta: float = 0.04
    loss_agg: Literal[
        "seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
    ] = "seq-mean-token-mean"
    old_logp: Literal["recompute", "rollout"] = "recompute"
    tis_cap: float | None = None
    impl: Literal["auto", "triton", "torch"] = "auto"
    grad_weight_accum: Literal["auto", "main_grad", "fp32", "param"] = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "iterations", "prompts_per_step", "group_size", "mu"):
            if getattr(self, name) < 1:
                raise ConfigError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size < 1:
            raise ConfigError(f"grpo.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.iterations > self.steps:
            raise ConfigError(f"grpo.iterations={self.iterations} > grpo.steps={self.steps}")
        if self.beta < 0:
            raise ConfigError(f"grpo.beta must be >= 0, got {self.beta}")
        if self.old_logp == "rollout" and self.mu != 1:
            raise ConfigError("grpo.old_logp=rollout is only exact with grpo.mu=1")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ConfigError(f"grpo.tis_cap must be > 0, got {self.tis_cap}")


@dataclass
class RolloutConfig:
    """Sampling. backend: ``hf`` (transformers generate) or ``vllm`` (GPU, optional).

    tools: ``python`` samples tool-integrated solutions (``dsm_engine.rollout.tools``): a
    response that writes a ```` ```python ```` block and then ```` ```output ```` has the block
    run in the sandbox and its output appended (tir format), then sampling resumes, up to
    ``tool_max_rounds`` runs per response. The appended outputs are masked out of the policy
    loss and count against ``max_new_tokens``; the verifier grades the whole response, and
    held-out evaluation runs with the tool too. ``none``: plain text. Both backends.
    tool_timeout_s: wall-clock limit per program; tool_output_chars: longer outputs are
    elided in the middle; tool_workers: sandbox processes (0: one per core).
    """

    backend: Literal["hf", "vllm"] = "hf"
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    max_batch_rows: int = 256
    tools: Literal["none", "python"] = "none"
    tool_max_rounds: int = 4
    tool_timeout_s: float = 10.0
    tool_output_chars: int = 512
    tool_workers: int = 0

    def __post_init__(self) -> None:
        if self.tool_max_rounds < 1:
            raise ConfigError(f"rollout.tool_max_rounds must be >= 1, got {self.tool_max_rounds}")
        if not self.tool_timeout_s > 0:
            raise ConfigError(f"rollout.tool_timeout_s must be > 0, got {self.tool_timeout_s}")
        if self.tool_output_chars < 16:
            raise ConfigError(
                f"rollout.tool_output_chars must be >= 16, got {self.tool_output_chars}"
            )
        if self.tool_workers < 0:
            raise ConfigError(f"rollout.tool_workers must be >= 0, got {self.tool_workers}")


@dataclass
class PromptDataConfig:
    """Prompts from JSON Lines. ``template`` is formatted with ``question=`` (the default is
    the paper's chain-of-thought instruction); ``answer_field`` holds the gold answer.
    ``tokenizer``: a tokenizer.json file or a Hugging Face tokenizer folder.
    ``solution_field`` holds a worked gold solution, read only by ``algorithm.name: sft``
    (which trains on it; the MATH files and the arithmetic task's rows call it ``solution``)."""

    path: str = ""
    tokenizer: str = ""
    question_field: str = "question"
    answer_field: str = "answer"
    solution_field: str = "solution"
    template: str = COT_TEMPLATE
    add_bos: bool = True
    max_prompt_tokens: int = 512
    seed: int = 1234


@dataclass
class RewardConfig:
    """Reward: ``name`` as registered with ``dsm_engine.rewards.build_reward_fn``
    (``verifier``: rule-based); the verifier's answer ``kind`` and time limit. That reward
    always runs (it gives the reward/accuracy metrics and ``mixed``'s outcome term).

    ``supervision`` picks what the advantages come from (``compute_advantages`` of
    ``dsm_engine.reward_models.grpo_rewards``): ``verifier`` (outcome, the reward above),
    ``orm`` (the reward model's score at the last token), ``prm`` (per-token process
    advantages from step scores; steps split at ``delimiter``) or ``mixed`` (verifier outcome
    + ``prm_weight`` × process). ``model_path``: a ``dsm train rm`` checkpoint, needed unless
    ``supervision`` is ``verifier``. (``name`` and ``kind`` already had their meanings, hence
    a new field.) ``ensemble``: more checkpoints of the same kind (e.g. the same labels, other
    seeds); the learned score is then the mean of all members' probabilities, which blunts the
    errors a policy would otherwise find and exploit in any single reward model.
    """

    name: str = "verifier"
    kind: str = "auto"
    timeout_s: float = 3.0
    supervision: Literal["verifier", "orm", "prm", "mixed"] = "verifier"
    model_path: str = ""
    delimiter: str = "\n"
    prm_weight: float = 1.0
    ensemble: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.supervision != "verifier" and not self.model_path:
            raise ConfigError(
                f"reward.model_path: reward.supervision={self.supervision} needs a reward-model "
                "checkpoint (dsm train rm)"
            )
        if self.ensemble and self.supervision == "verifier":
            raise ConfigError(
                "reward.ensemble: extra reward models need reward.supervision orm, prm or mixed "
                "(it is verifier)"
            )
        if any(not p for p in self.ensemble):
            raise ConfigError(f"reward.ensemble: empty checkpoint path in {self.ensemble}")
        if not self.delimiter:
            raise ConfigError("reward.delimiter must not be empty")


@dataclass
class RewardModelUpdateConfig:
    """Iterative RL (paper §4.1.4): continue training the reward model at every iteration
    boundary on the current policy's samples, with a replay share of historical data.

    ``steps``: reward-model optimizer steps per boundary (0: off, the reward model stays fixed).
    Labels: ``prompts`` GRPO training prompts (from the current data position), ``samples``
    responses each, graded by the answer verifier (ORM labels); process supervision (prm /
    mixed) adds Monte-Carlo step labels from ``completions`` rollouts per step. Batches hold
    ``global_batch_size`` rows (``micro_batch_size`` per forward), ``replay_ratio`` of them
    from the replay buffer (exactly, when ``global_batch_size * replay_ratio`` is an integer);
    the buffer keeps at most ``replay_capacity`` rows. ``lr``: constant (the paper's 2e-5).
    ``eval_fraction`` of the new labels is held out for the logged accuracy / AUC.
    """

    steps: int = 0
    prompts: int = 64
    samples: int = 4
    completions: int = 4
    global_batch_size: int = 20
    micro_batch_size: int = 10
    lr: float = 2e-5
    replay_ratio: float = 0.1
    replay_capacity: int = 100_000
    eval_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"rm_update.steps must be >= 0 (0: off), got {self.steps}")
        for name in ("prompts", "samples", "completions", "global_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rm_update.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size < 1 or self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"rm_update.micro_batch_size={self.micro_batch_size} must be >= 1 and divide "
                f"rm_update.global_batch_size={self.global_batch_size}"
            )
        if self.lr <= 0:
            raise ConfigError(f"rm_update.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.replay_ratio < 1.0:
            raise ConfigError(f"rm_update.replay_ratio must be in [0, 1), got {self.replay_ratio}")
        if self.replay_capacity < 1:
            raise ConfigError(f"rm_update.replay_capacity must be >= 1, got {self.replay_capacity}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(
                f"rm_update.eval_fraction must be in [0, 1), got {self.eval_fraction}"
            )


@dataclass
class ReferenceConfig:
    """The frozen reference policy; ``offload_to_cpu`` keeps it in CPU memory between uses."""

    offload_to_cpu: bool = False


@dataclass
class EvalConfig:
    """Held-out greedy exact-match accuracy every ``every`` steps (0: never) on the first
    ``num_prompts`` rows of ``path`` (JSON Lines, same fields as ``data``), as
    ``eval_accuracy``. With ``samples`` > 0, also the mean accuracy of that many responses
    per prompt sampled at ``rollout.temperature`` (seeded by ``train.seed``, the same at every
    evaluation), as ``eval_sampled_accuracy``: a smooth function of the policy, where greedy
    accuracy jumps with each argmax that flips."""

    path: str = ""
    every: int = 0
    num_prompts: int = 200
    max_new_tokens: int = 64
    samples: int = 0

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ConfigError(f"eval.samples={self.samples}: must be >= 0 (0: greedy only)")


@dataclass
class GRPOConfig(RunConfig):
    """``dsm train grpo``: GRPO (or ``algorithm.name``'s method, see the module docstring) on
    a megatron-core policy."""

    grpo: GRPOAlgoConfig = field(default_factory=GRPOAlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rm_update: RewardModelUpdateConfig = field(default_factory=RewardModelUpdateConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)

    def __post_init__(self) -> None:
        self._check_algorithm()
        if self.parallel.virtual_pp:
            raise ConfigError(
                "parallel.virtual_pp: the GRPO loop runs the plain 1F1B pipeline schedule "
                "(set parallel.pp alone)"
            )
        if self.rm_update.steps:
            if self.reward.supervision == "verifier":
                raise ConfigError(
                    f"rm_update.steps={self.rm_update.steps}: retraining a reward model needs "
                    "reward.supervision orm, prm or mixed (it is verifier)"
                )
            if self.reward.ensemble:
                raise ConfigError(
                    f"reward.ensemble: iterative refresh (rm_update.steps={self.rm_update.steps})"
                    " continues one reward model; use reward.model_path alone"
                )
            if self.grpo.iterations < 2:
                raise ConfigError(
                    f"rm_update.steps={self.rm_update.steps}: the reward model is retrained "
                    f"between iterations, but grpo.iterations={self.grpo.iterations}"
                )

    def _check_algorithm(self) -> None:
        """The combinations of ``algorithm.name`` with the other sections the loop can run."""
        name, g = self.algorithm.name, self.grpo
        if name != "ppo" and (self.critic.load or self.critic.lr is not None):
            raise ConfigError(
                f"critic: a value model is trained with algorithm.name=ppo only (it is {name})"
            )
        if name in GOLD_ALGORITHMS:
            if g.group_size != 1:
                raise ConfigError(
                    f"grpo.group_size={g.group_size}: algorithm.name={name} trains on the one "
                    "gold solution of each prompt and needs grpo.group_size=1"
                )
            if g.tis_cap is not None:
                raise ConfigError(
                    f"grpo.tis_cap={g.tis_cap}: algorithm.name={name} samples nothing; truncated "
                    "importance sampling corrects online sampling only"
                )
        if name != "grpo" and self.reward.supervision != "verifier":
            raise ConfigError(
                f"reward.supervision={self.reward.supervision}: learned (outcome or process) "
                f"supervision runs with algorithm.name=grpo only (it is {name})"
            )
        if name in SINGLE_UPDATE_ALGORITHMS:
            if g.mu != 1:
                raise ConfigError(f"grpo.mu={g.mu}: algorithm.name={name} needs grpo.mu=1")
            if g.old_logp != "recompute":
                raise ConfigError(
                    f"grpo.old_logp={g.old_logp}: algorithm.name={name} needs "
                    "grpo.old_logp=recompute (its coefficient uses the current policy's log-probs)"
                )
        if name == "rloo" and g.group_size < 2:
            raise ConfigError("grpo.group_size=1: algorithm.name=rloo needs a group of >= 2")
        if name in OFFLINE_ALGORITHMS:
            if g.iterations != 1:
                raise ConfigError(
                    f"grpo.iterations={g.iterations}: algorithm.name={name} is offline (the "
                    "sampler and the reference stay π_sft) and needs grpo.iterations=1"
                )
            if g.tis_cap is not None:
                raise ConfigError(
                    f"grpo.tis_cap={g.tis_cap}: algorithm.name={name} is offline; truncated "
                    "importance sampling corrects online sampling only"
                )


def iteration_of(step: int, cfg: GRPOConfig) -> int:
    """The outer iteration that GRPO step ``step`` (0-based) belongs to."""
    per = cfg.grpo.steps // cfg.grpo.iterations
    return min(step // per, cfg.grpo.iterations - 1)
