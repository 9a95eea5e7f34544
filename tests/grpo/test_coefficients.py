"""Each method's gradient coefficient (DeepSeekMath Table 10) on a tiny batch equals values
derived by hand; the registry holds the paper's data sources and rewards; ``plan_update``
turns a coefficient into ``grpo_updates``' inputs."""

from __future__ import annotations

import math

import pytest
import torch

from dsm_engine.config import ConfigError
from dsm_engine.grpo.algorithms import (
    ALGORITHMS,
    AlgorithmConfig,
    AlgorithmName,
    CoefficientInputs,
    LossSettings,
    coefficient,
    plan_update,
)
from dsm_engine.grpo.batch import build_batch
from dsm_engine.grpo.config import GRPOAlgoConfig

RUN = LossSettings(beta=0.04, clip_eps_low=0.2, clip_eps_high=0.28, loss_agg="seq-mean-token-mean")
# two groups of three: rewards 3, 0, 1 (mean 4/3, population std sqrt(14)/3) and 1, 1, 1
REWARDS = torch.tensor([3.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
MASK = torch.tensor([[False, True, True, True]] * 6)


def _coef(name: str, **inputs):
    x = CoefficientInputs(rewards=REWARDS, mask=MASK, group_size=3, **inputs)
    return coefficient(AlgorithmConfig(name=name), x, RUN)


def _close(got, want):
    torch.testing.assert_close(
        got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=1e-6
    )


def test_registry_is_the_papers_table():
    assert set(ALGORITHMS) == set(AlgorithmName.__args__)
    table = {name: (a.data, a.reward) for name, a in ALGORITHMS.items()}
    assert table["sft"] == ("offline", "none")
    assert table["rft"] == ("offline", "rule")
    assert table["dpo"] == ("offline", "rule")
    assert table["online_rft"] == ("online", "rule")
    assert table["ppo"] == ("online", "model")
    assert table["grpo"] == ("online", "model")


def test_sft_is_one_without_kl_or_clipping():
    c = _coef("sft")
    _close(c.advantages, [1.0] * 6)
    assert (c.loss.beta, c.loss.clip_eps_low, c.loss.clip_eps_high) == (0.0, math.inf, math.inf)
    assert c.rows is None and c.single_update
    assert "nll" not in c.metrics  # no log-probs given
    # 18 response tokens: log-probs -0.5 on rows 0-2, -2 on rows 3-5, masked tokens ignored
    old = torch.tensor([[-9.0, -0.5, -0.5, -0.5]] * 3 + [[-9.0, -2.0, -2.0, -2.0]] * 3)
    assert _coef("sft", old_logp=old).metrics["nll"] == pytest.approx((9 * 0.5 + 9 * 2) / 18)


@pytest.mark.parametrize("name", ["rft", "online_rft"])
def test_rft_is_the_indicator_of_a_correct_answer(name):
    c = _coef(name)
    _close(c.advantages, [1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert c.rows.tolist() == [True, False, True, True, True, True]
    assert (c.loss.beta, c.loss.clip_eps_low) == (0.0, math.inf) and c.single_update
    # data-parallel ranks weigh their update by what it is a mean over: 5 kept rows, or
    # under token-mean their 15 tokens
    assert c.weight == 5.0
    per_token = LossSettings(0.04, 0.2, 0.2, "token-mean")
    x = CoefficientInputs(rewards=REWARDS, mask=MASK, group_size=3)
    assert coefficient(AlgorithmConfig(name=name), x, per_token).weight == 15.0
    # a rank with 5 of the 8 kept rows of two ranks (mean 4) scales its GC by 5/4
    _close(c.dp_weighted(4.0).advantages, [1.25, 0.0, 1.25, 1.25, 1.25, 1.25])
    grpo = _coef("grpo")
    assert grpo.weight is None and grpo.dp_weighted(4.0) is grpo  # GRPO's ranks weigh the same


def test_grpo_rloo_dr_grpo_baselines():
    std = math.sqrt(14) / 3
    grpo = _coef("grpo")
    _close(grpo.advantages, [(5 / 3) / std, (-4 / 3) / std, (-1 / 3) / std, 0, 0, 0])
    assert grpo.loss == RUN and not grpo.single_update  # the run's clip range and k3 KL
    rloo = _coef("rloo")  # r_i - mean of the other two
    _close(rloo.advantages, [3 - 0.5, 0 - 2.0, 1 - 1.5, 0, 0, 0])
    assert rloo.loss == RUN
    dr = _coef("dr_grpo")  # r - mean, no std, no 1/|o|
    _close(dr.advantages, [5 / 3, -4 / 3, -1 / 3, 0, 0, 0])
    assert dr.loss.loss_agg == "seq-mean-token-sum-norm" and dr.loss.beta == RUN.beta


def test_ppo_gae_with_kl_in_the_reward():
    """Row 0 answers at t = 1..3 with reward 1, row 1 at t = 2 with reward 0; β = 0.04 here
    is grpo.beta, γ = 1, λ = 0.5."""
    x = CoefficientInputs(
        rewards=torch.tensor([1.0, 0.0]),
        mask=torch.tensor([[False, True, True, True], [False, False, True, False]]),
        group_size=1,
        old_logp=torch.tensor([[0.0, -1.0, -2.0, -0.5], [0.0, 0.0, -1.0, 0.0]]),
        ref_logp=torch.tensor([[0.0, -1.5, -1.5, -1.0], [0.0, 0.0, -2.0, 0.0]]),
        values=torch.tensor([[9.0, 0.5, 0.4, 0.8], [9.0, 9.0, 0.3, 9.0]]),
    )
    c = coefficient(AlgorithmConfig(name="ppo", gamma=1.0, lam=0.5), x, RUN)
    # log(old/ref) = 0.5, -0.5, 0.5 and 1.0: r = -0.02, +0.02, 1 - 0.02 and -0.04
    d3 = 0.98 - 0.8
    d2 = 0.02 + 0.8 - 0.4
    d1 = -0.02 + 0.4 - 0.5
    a3, a2 = d3, d2 + 0.5 * d3
    a1 = d1 + 0.5 * a2
    _close(c.advantages, [[0, a1, a2, a3], [0, 0, -0.04 - 0.3, 0]])
    _close(c.returns, [[0, a1 + 0.5, a2 + 0.4, a3 + 0.8], [0, 0, -0.04, 0]])
    assert c.loss.beta == 0.0 and c.loss.clip_eps_high == RUN.clip_eps_high


def test_missing_inputs_and_bad_config_are_named():
    with pytest.raises(ValueError, match="ref_logp, values"):
        _coef("ppo", old_logp=torch.zeros(6, 4))
    with pytest.raises(ValueError, match="group_size >= 2"):
        coefficient(
            AlgorithmConfig(name="rloo"),
            CoefficientInputs(rewards=REWARDS, mask=MASK, group_size=1),
            RUN,
        )
    for kwargs, field in [
        ({"name": "reinforce"}, "algorithm.name"),
        ({"gamma": 1.1}, "algorithm.gamma"),
        ({"lam": -0.1}, "algorithm.lam"),
        ({"value_clip": 0.0}, "algorithm.value_clip"),
        ({"dpo_beta": float("inf")}, "algorithm.dpo_beta"),
        ({"pairs_per_prompt": 0}, "algorithm.pairs_per_prompt"),
    ]:
        with pytest.raises(ConfigError, match=field):
            AlgorithmConfig(**kwargs)


def _batch():
    prompts = [[5, 6]] * 6
    responses = [[7, 8, 9], [7], [8, 8], [9, 9, 9], [7, 7], [8]]
    return build_batch(
        prompts,
        responses,
        [[0.0] * len(r) for r in responses],
        REWARDS.tolist(),
        [True] * 6,
        pad_id=0,
    )


def test_plan_update_for_rft_keeps_correct_rows_without_kl_or_clipping():
    batch = _batch()
    run = GRPOAlgoConfig(group_size=3, beta=0.04, micro_batch_size=2)
    plan = plan_update(batch, _coef("rft"), run)
    assert plan.index.tolist() == [0, 2, 3, 4, 5]
    assert torch.equal(plan.batch.tokens, batch.tokens[[0, 2, 3, 4, 5]])
    assert torch.equal(plan.advantages, torch.ones(5))
    assert (plan.config.beta, plan.config.clip_eps_low, plan.config.clip_eps_high) == (
        0.0,
        math.inf,
        math.inf,
    )
    assert plan.config.micro_batch_size == 2 and run.beta == 0.04  # the run's config is untouched
    with pytest.raises(ConfigError, match="grpo.mu"):
        plan_update(batch, _coef("rft"), GRPOAlgoConfig(group_size=3, mu=2))
    grpo = plan_update(batch, _coef("grpo"), GRPOAlgoConfig(group_size=3, mu=2, clip_eps_high=0.3))
    assert len(grpo.batch) == 6 and grpo.config.clip_eps_high == RUN.clip_eps_high


def test_plan_update_is_none_when_no_row_is_correct():
    x = CoefficientInputs(rewards=torch.zeros(6), mask=MASK, group_size=3)
    c = coefficient(AlgorithmConfig(name="rft"), x, RUN)
    assert plan_update(_batch(), c, GRPOAlgoConfig(group_size=3)) is None
