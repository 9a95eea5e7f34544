"""Post-training methods as gradient coefficients (DeepSeekMath §5.2, Table 10).

Every method's gradient is ``E[(1/|o|) Σ_t GC(q, o, t) ∇θ log πθ(o_t | q, o_<t)]``; methods
differ in their data source (``offline``: samples of the SFT policy or the SFT data;
``online``: samples of the current policy), their reward (``rule``: the verifier; ``model``: a
reward model; ``none``) and their gradient coefficient GC. A coefficient here turns a rollout
batch's rewards, mask and log-probs into what ``fused_linear_grpo_loss`` consumes: advantages
``(B,)`` or ``(B, T)`` and the loss settings (KL weight, clip range, aggregation) to use with
them. With ``old_logp`` the current policy's log-probs the ratio is 1, so the loss's gradient
is ``-GC ∇ log πθ`` (aggregated as ``loss_agg`` says) for any method.

Adding a method is a coefficient function, one line in ``ALGORITHMS`` and its name in
``AlgorithmName`` (``dsm_engine.grpo.config``, beside ``AlgorithmConfig``, the ``algorithm:``
section of a GRPO run).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from dsm_engine.config import ConfigError
from dsm_engine.grpo.batch import GRPOBatch
from dsm_engine.grpo.config import AlgorithmConfig, AlgorithmName, GRPOAlgoConfig  # noqa: F401
from dsm_engine.grpo.dpo import dpo_coefficient, sequence_logp
from dsm_engine.grpo.gae import gae
from dsm_engine.kernels import group_advantages

DataSource = Literal["offline", "online"]
RewardSource = Literal["rule", "model", "none"]


@dataclass(frozen=True)
class LossSettings:
    """What ``fused_linear_grpo_loss`` computes besides the advantages (see GRPOAlgoConfig)."""

    beta: float
    clip_eps_low: float
    clip_eps_high: float
    loss_agg: str

    @classmethod
    def of(cls, cfg: GRPOAlgoConfig) -> LossSettings:
        """The run's settings (``grpo.beta``, ``grpo.clip_eps_*``, ``grpo.loss_agg``)."""
        return cls(cfg.beta, cfg.clip_eps_low, cfg.clip_eps_high, cfg.loss_agg)

    def unclipped(self) -> LossSettings:
        """No KL term and no clipping: the loss's gradient is exactly ``-GC ∇ log πθ``."""
        return dataclasses.replace(self, beta=0.0, clip_eps_low=math.inf, clip_eps_high=math.inf)


@dataclass(frozen=True)
class CoefficientInputs:
    """A rollout batch as a coefficient sees it. rewards ``(B,)``; mask ``(B, T)`` bool
    (response tokens); rows grouped by prompt, ``group_size`` each. old_logp / ref_logp
    ``(B, T)``: log-probs of the targets under the policy that sampled them (π_old; for
    offline methods the current policy) and the reference. values ``(B, T)``: the critic's
    (``ppo``). pairs ``(P, 2)``: DPO's ``(chosen, rejected)`` rows."""

    rewards: Tensor
    mask: Tensor
    group_size: int
    old_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    values: Tensor | None = None
    pairs: Tensor | None = None

    @classmethod
    def of_batch(
        cls, batch: Any, group_size: int, old_logp: Tensor, ref_logp: Tensor, **extra: Any
    ) -> CoefficientInputs:
        """The inputs of a rollout ``batch`` (its ``rewards`` and response ``mask``);
        ``extra``: ``values`` or ``pairs``."""
        return cls(batch.rewards, batch.mask, group_size, old_logp, ref_logp, **extra)


@dataclass(frozen=True)
class Coefficient:
    """A coefficient's output. advantages: ``(B,)`` or ``(B, T)`` fp32, the GC per sequence
    or per token. loss: the loss settings to use. rows: ``(B,)`` bool, the rows the update
    needs (None: all; others have GC 0 and no KL term). returns: ``(B, T)`` value targets
    (``ppo``). single_update: the GC multiplies ``∇ log πθ`` with no importance ratio, so it
    is exact only for one update on a batch whose ``old_logp`` is the current policy's.
    weight: what the loss on this batch is a mean over (kept rows, or their tokens under
    ``token-mean``; DPO's pairs). Data-parallel ranks keep different amounts, so each rank's
    loss is weighted by its share (``dp_weighted``) and the update is the mean over all ranks'
    rows as one process would take it; None: every rank weighs the same (GRPO's groups)."""

    advantages: Tensor
    loss: LossSettings
    rows: Tensor | None = None
    returns: Tensor | None = None
    single_update: bool = False
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    weight: float | None = None

    def dp_weighted(self, mean_weight: float) -> Coefficient:
        """The coefficient scaled by ``weight / mean_weight`` (``mean_weight``: the mean of
        ``weight`` over the data-parallel ranks, which average their gradients)."""
        if self.weight is None or mean_weight <= 0:
            return self
        scale = self.weight / mean_weight
        return dataclasses.replace(self, advantages=self.advantages * scale)


CoefficientFn = Callable[[CoefficientInputs, AlgorithmConfig, LossSettings], Coefficient]


def _correct(x: CoefficientInputs, cfg: AlgorithmConfig) -> Tensor:
    return x.rewards >= cfg.correct_threshold


def _kept_weight(x: CoefficientInputs, rows: Tensor, loss: LossSettings) -> float:
    """What a mean over ``rows`` ``(B,)`` bool runs over: their tokens under ``token-mean``,
    else their number."""
    if loss.loss_agg == "token-mean":
        return float(x.mask[rows.to(x.mask.device)].sum())
    return float(rows.sum())


def sft_coefficient(x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings) -> Coefficient:
    """SFT: GC = 1 on every token of every (gold) response. Metric ``nll``: the mean token
    negative log-likelihood of the responses under ``old_logp`` (the current policy), when
    given: SFT's training loss, which the loop's loss (``-ratio``, always -1 here) is not."""
    ones = torch.ones(x.rewards.shape, dtype=torch.float32, device=x.rewards.device)
    metrics = {}
    if x.old_logp is not None:
        mask = x.mask.bool()
        metrics["nll"] = float(-(x.old_logp.float() * mask).sum() / mask.sum().clamp(min=1))
    weight = _kept_weight(x, torch.ones_like(ones, dtype=torch.bool), loss)
    return Coefficient(ones, loss.unclipped(), single_update=True, metrics=metrics, weight=weight)


def rft_coefficient(x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings) -> Coefficient:
    """RFT and Online RFT: GC = I(o), 1 for a correct sample, else 0. Only the correct rows
    are kept, so the update is SFT on the filtered samples (mean over them)."""
    correct = _correct(x, cfg)
    acc = float(correct.float().mean()) if correct.numel() else 0.0
    return Coefficient(
        correct.float(),
        loss.unclipped(),
        rows=correct,
        single_update=True,
        metrics={"kept": acc},
        weight=_kept_weight(x, correct, loss),
    )


def grpo_coefficient(x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings) -> Coefficient:
    """GRPO (outcome supervision): ``(r - mean) / std`` within each group; the run's clip range
    and k3 KL term (``β (πref/πθ - 1)`` in the GC) stay in the loss."""
    return Coefficient(group_advantages(x.rewards.float(), x.group_size), loss)


def rloo_coefficient(x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings) -> Coefficient:
    """RLOO: ``r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean)`` (needs G >= 2)."""
    if x.group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline)")
    r = x.rewards.float().view(-1, x.group_size)
    adv = (r - r.mean(1, keepdim=True)) * (x.group_size / (x.group_size - 1))
    return Coefficient(adv.view(-1), loss)


def dr_grpo_coefficient(
    x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings
) -> Coefficient:
    """Dr. GRPO (Liu et al. 2025): ``r - mean`` (no std) and no ``1/|o|`` length normalisation
    (``seq-mean-token-sum-norm``: token sums over a constant length)."""
    r = x.rewards.float().view(-1, x.group_size)
    adv = (r - r.mean(1, keepdim=True)).view(-1)
    return Coefficient(adv, dataclasses.replace(loss, loss_agg="seq-mean-token-sum-norm"))


def ppo_token_rewards(x: CoefficientInputs, kl_beta: float) -> Tensor:
    """Paper eq. (2): ``r_t = r_φ(q, o) [t is the last token] - β log(π_old(o_t) / π_ref(o_t))``
    per response token, ``(B, T)`` fp32 (0 off the mask)."""
    mask = x.mask.bool()
    kl = (x.old_logp.float() - x.ref_logp.float()) * mask
    t = mask.shape[1]
    last = (t - 1) - mask.flip(1).int().argmax(1)  # (B,) last response position
    outcome = torch.zeros_like(kl)
    outcome[torch.arange(len(last), device=last.device), last] = x.rewards.float().to(last.device)
    return torch.where(mask, outcome - kl_beta * kl, torch.zeros_like(kl))


def ppo_coefficient(x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings) -> Coefficient:
    """PPO: per-token GAE advantages from the critic's values over the rewards of
    ``ppo_token_rewards`` (the KL penalty, weight ``grpo.beta``, is in the reward, so not in the
    loss); the run's clip range. ``returns`` are the critic's targets."""
    rewards = ppo_token_rewards(x, loss.beta)
    adv, returns = gae(rewards, x.values.float(), x.mask.bool(), gamma=cfg.gamma, lam=cfg.lam)
    mask = x.mask.bool()
    metrics = {
        "kl_reward": float(
            ((x.old_logp - x.ref_logp).float() * mask).sum() / mask.sum().clamp(min=1)
        ),
        "value_mean": float((x.values.float() * mask).sum() / mask.sum().clamp(min=1)),
    }
    return Coefficient(adv, dataclasses.replace(loss, beta=0.0), returns=returns, metrics=metrics)


def dpo_algorithm_coefficient(
    x: CoefficientInputs, cfg: AlgorithmConfig, loss: LossSettings
) -> Coefficient:
    """DPO: ``±β σ(β (Δ- - Δ+))`` on the tokens of each pair's chosen / rejected response,
    scaled so that ``seq-mean-token-sum`` over the pairs' rows is the mean DPO loss's gradient
    (``old_logp`` must be the current policy's)."""
    policy = sequence_logp(x.old_logp.float(), x.mask.bool())
    ref = sequence_logp(x.ref_logp.float(), x.mask.bool())
    coef = dpo_coefficient(policy, ref, x.pairs, cfg.dpo_beta)
    rows = torch.zeros(coef.shape, dtype=torch.bool, device=coef.device)
    rows[x.pairs.reshape(-1).to(rows.device)] = True
    # seq-mean divides by the kept rows; the loss is a mean over pairs
    scale = float(rows.sum()) if len(x.pairs) else 0.0
    settings = dataclasses.replace(loss.unclipped(), loss_agg="seq-mean-token-sum")
    return Coefficient(
        coef * scale, settings, rows=rows, single_update=True, weight=float(len(x.pairs))
    )


@dataclass(frozen=True)
class Algorithm:
    """A method: its data source, its reward and its coefficient. needs: the optional
    ``CoefficientInputs`` fields its coefficient reads."""

    data: DataSource
    reward: RewardSource
    coefficient: CoefficientFn
    needs: frozenset[str] = frozenset()


_PAIRS = frozenset({"old_logp", "ref_logp", "pairs"})
_CRITIC = frozenset({"old_logp", "ref_logp", "values"})
ALGORITHMS: dict[str, Algorithm] = {
    "sft": Algorithm("offline", "none", sft_coefficient),
    "rft": Algorithm("offline", "rule", rft_coefficient),
    "online_rft": Algorithm("online", "rule", rft_coefficient),
    "dpo": Algorithm("offline", "rule", dpo_algorithm_coefficient, _PAIRS),
    "ppo": Algorithm("online", "model", ppo_coefficient, _CRITIC),
    "grpo": Algorithm("online", "model", grpo_coefficient),
    "rloo": Algorithm("online", "model", rloo_coefficient),
    "dr_grpo": Algorithm("online", "model", dr_grpo_coefficient),
}


def coefficient(cfg: AlgorithmConfig, x: CoefficientInputs, loss: LossSettings) -> Coefficient:
    """``cfg.name``'s coefficient of batch ``x``; ValueError naming an input it needs that is
    missing."""
    algorithm = ALGORITHMS[cfg.name]
    missing = sorted(n for n in algorithm.needs if getattr(x, n) is None)
    if missing:
        raise ValueError(f"algorithm {cfg.name} needs {', '.join(missing)}")
    return algorithm.coefficient(x, cfg, loss)


@dataclass
class UpdatePlan:
    """What ``grpo_updates`` takes for a coefficient: the batch's kept rows, their
    advantages and the run's ``GRPOAlgoConfig`` with the coefficient's loss settings.
    index: ``(B',)`` the kept rows of the original batch (select ``old_logp``/``ref_logp``)."""

    batch: GRPOBatch
    advantages: Tensor
    config: GRPOAlgoConfig
    index: Tensor


def plan_update(batch: GRPOBatch, coef: Coefficient, cfg: GRPOAlgoConfig) -> UpdatePlan | None:
    """The ``grpo_updates`` inputs of ``coef`` on ``batch`` (None when it keeps no row).

    Raises ConfigError when the coefficient holds for one update only and ``grpo.mu > 1``.
    """
    if coef.single_update and cfg.mu != 1:
        raise ConfigError(f"grpo.mu={cfg.mu}: this algorithm's coefficient needs grpo.mu=1")
    keep = torch.ones(len(batch), dtype=torch.bool) if coef.rows is None else coef.rows.cpu()
    index = keep.nonzero().flatten().to(batch.tokens.device)
    if index.numel() == 0:
        return None
    rows = GRPOBatch(*(getattr(batch, f)[index] for f in GRPOBatch.__dataclass_fields__))
    loss = coef.loss
    config = dataclasses.replace(
        cfg,
        beta=loss.beta,
        clip_eps_low=loss.clip_eps_low,
        clip_eps_high=loss.clip_eps_high,
        loss_agg=loss.loss_agg,
    )
    return UpdatePlan(rows, coef.advantages[index.to(coef.advantages.device)], config, index)
