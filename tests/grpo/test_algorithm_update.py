"""A coefficient plugged into the GRPO update (``plan_update`` -> ``accumulate_grads``, what
``grpo_updates`` runs per step) on a tiny megatron-core policy gives the method's gradient,
written out in float64 on a Hugging Face copy of the policy: RFT's is SFT's on the correct
samples only (the gradient of their mean per-token log-likelihood), SFT's the same over every
sample (and over the loop's gold-solution rows), DPO's the DPO loss's over its pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import TINY, grads_as_hf, random_batch  # noqa: E402
from step_worker import TEMP, initial_state  # noqa: E402

GROUP = 4


def grads_fp64(hf_state, cfg, batch, loss_of):
    """Gradients, by Hugging Face name, of ``loss_of(logp)`` where ``logp`` ``(B, T)`` are the
    targets' log-probs under a float64 Hugging Face copy of the policy (at TEMP)."""
    from transformers import LlamaForCausalLM

    from dsm_engine.models.convert import hf_config

    hcfg = hf_config(cfg)
    hcfg._attn_implementation = "eager"
    model = LlamaForCausalLM(hcfg).double()
    model.load_state_dict({k: v.double() for k, v in hf_state.items()})
    logits = model(input_ids=batch.tokens).logits.double() / TEMP
    logp = torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None]).squeeze(-1)
    loss_of(logp).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _policy(state, arch=TINY):
    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import load_hf_weights

    cfg = model_config(arch)
    ctx = initialize_parallel(ParallelConfig(), seed=1)
    model = build_model(cfg, ctx, init_weights=False)
    load_hf_weights(model, state.__getitem__, cfg)
    return model, cfg


def _assert_same_grads(got, want):
    assert set(got) == set(want)
    for k, g in want.items():
        torch.testing.assert_close(got[k].double(), g, rtol=1e-4, atol=1e-6, msg=k)


@pytest.fixture()
def parallel_teardown():
    yield
    from dsm_engine.models.parallel import destroy_parallel

    destroy_parallel()


@pytest.mark.parametrize("name", ["rft", "sft"])
def test_update_is_sft_on_the_kept_samples(name, parallel_teardown):
    from dsm_engine.grpo.algorithms import (
        AlgorithmConfig,
        CoefficientInputs,
        LossSettings,
        coefficient,
        plan_update,
    )
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.step import accumulate_grads, sequence_logprobs

    state = initial_state(0)
    model, cfg = _policy(state)
    batch = random_batch(seed=3, groups=3, group_size=GROUP)
    correct = batch.rewards >= 0.5
    assert 0 < int(correct.sum()) < len(batch)

    run = GRPOAlgoConfig(group_size=GROUP, micro_batch_size=5, beta=0.04)
    logp, _ = sequence_logprobs(
        model, batch.tokens, batch.targets, temperature=TEMP, micro_batch_size=5
    )
    x = CoefficientInputs(rewards=batch.rewards, mask=batch.mask, group_size=GROUP)
    coef = coefficient(AlgorithmConfig(name=name), x, LossSettings.of(run))
    plan = plan_update(batch, coef, run)
    kept = plan.index
    want_rows = correct.nonzero().flatten() if name == "rft" else torch.arange(len(batch))
    assert torch.equal(kept, want_rows)

    model.zero_grad()
    old = logp[kept]  # the current policy: ratio 1
    accumulate_grads(model, plan.batch, old, old, plan.advantages, plan.config, temperature=TEMP)

    def mean_loglik(lp):  # -1/|kept| Σ_kept 1/|o| Σ_t log π(o_t)
        m = batch.mask[kept].double()
        return -((lp[kept] * m).sum(1) / m.sum(1)).mean()

    _assert_same_grads(grads_as_hf(model, cfg), grads_fp64(state, cfg, batch, mean_loglik))


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean"])
def test_sft_update_on_gold_solutions_is_the_mean_nll_gradient(
    loss_agg, parallel_teardown, tmp_path
):
    """The loop's sft rows (``gold_rollout``: prompt, then the solution and the end token
    under the same codec) mask exactly the solution tokens, and the update is the gradient
    of their mean NLL: per solution, then over solutions (``seq-mean-token-mean``, the
    paper's 1/|o|), or over all their tokens (``token-mean``, as ``dsm train sft``)."""
    from dsm_engine.grpo.algorithms import (
        AlgorithmConfig,
        CoefficientInputs,
        LossSettings,
        coefficient,
        plan_update,
    )
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.data import Prompt
    from dsm_engine.grpo.gold import gold_rollout
    from dsm_engine.grpo.step import accumulate_grads, sequence_logprobs
    from dsm_engine.tasks import arithmetic as ar
    from dsm_engine.text_codec import TextCodec

    codec = TextCodec(ar.build_tokenizer(ar.pretraining_texts(300), tmp_path / "tok.json"))
    problems = ar.make_problems("train", 3)
    prompts = [
        Prompt(p.prompt(), str(p.answer), codec.encode(p.prompt()), p.solution()) for p in problems
    ]
    batch = gold_rollout(codec, prompts, max_new_tokens=64).batch
    for j, p in enumerate(prompts):
        want = [*codec.encode(p.solution), codec.eos_id]
        assert batch.targets[j][batch.mask[j]].tolist() == want
        assert batch.tokens[j, : len(p.token_ids)].tolist() == p.token_ids

    from transformers import LlamaForCausalLM

    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config

    arch = {**TINY, "vocab_size": codec.vocab_size}
    torch.manual_seed(4)
    state = LlamaForCausalLM(hf_config(model_config(arch))).state_dict()
    model, cfg = _policy(state, arch)
    run = GRPOAlgoConfig(group_size=1, micro_batch_size=2, beta=0.04, loss_agg=loss_agg)
    logp, _ = sequence_logprobs(
        model, batch.tokens, batch.targets, temperature=TEMP, micro_batch_size=2
    )
    x = CoefficientInputs.of_batch(batch, 1, logp, logp)
    coef = coefficient(AlgorithmConfig(name="sft"), x, LossSettings.of(run))
    plan = plan_update(batch, coef, run)
    model.zero_grad()
    accumulate_grads(model, plan.batch, logp, logp, plan.advantages, plan.config, temperature=TEMP)

    m = batch.mask.double()
    assert coef.metrics["nll"] == pytest.approx(float(-(logp.double() * m).sum() / m.sum()))

    def mean_nll(lp):
        if loss_agg == "token-mean":
            return -(lp * m).sum() / m.sum()
        return -((lp * m).sum(1) / m.sum(1)).mean()

    _assert_same_grads(grads_as_hf(model, cfg), grads_fp64(state, cfg, batch, mean_nll))


def test_dpo_update_is_the_dpo_loss_gradient(parallel_teardown):
    """Pairs from the groups with both labels; the reference's log-probs fixed beforehand."""
    from dsm_engine.grpo.algorithms import (
        AlgorithmConfig,
        CoefficientInputs,
        LossSettings,
        coefficient,
        plan_update,
    )
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.dpo import select_pairs
    from dsm_engine.grpo.step import accumulate_grads, sequence_logprobs

    state = initial_state(0)
    model, cfg = _policy(state)
    batch = random_batch(seed=3, groups=3, group_size=GROUP)
    pairs = select_pairs(batch.rewards >= 0.5, GROUP, pairs_per_prompt=2, seed=0)
    assert len(pairs) >= 2
    logp, _ = sequence_logprobs(
        model, batch.tokens, batch.targets, temperature=TEMP, micro_batch_size=5
    )
    noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(2))
    ref = torch.where(batch.mask, logp + 0.3 * noise, 0.0)
    algo = AlgorithmConfig(name="dpo", dpo_beta=0.5)
    x = CoefficientInputs(
        rewards=batch.rewards,
        mask=batch.mask,
        group_size=GROUP,
        old_logp=logp,
        ref_logp=ref,
        pairs=pairs,
    )
    run = GRPOAlgoConfig(group_size=GROUP, micro_batch_size=5)
    plan = plan_update(batch, coefficient(algo, x, LossSettings.of(run)), run)
    model.zero_grad()
    idx = plan.index
    accumulate_grads(
        model, plan.batch, logp[idx], ref[idx], plan.advantages, plan.config, temperature=TEMP
    )

    def dpo(lp):  # -mean log σ(β[(π(o+) - ref(o+)) - (π(o-) - ref(o-))]), sums over tokens
        m = batch.mask.double()
        delta = (lp * m).sum(1) - (ref.double() * m).sum(1)
        z = algo.dpo_beta * (delta[pairs[:, 0]] - delta[pairs[:, 1]])
        return -torch.log(1 / (1 + torch.exp(-z))).mean()

    _assert_same_grads(grads_as_hf(model, cfg), grads_fp64(state, cfg, batch, dpo))


def test_ppo_update_is_the_clipped_objective_with_gae_advantages(parallel_teardown):
    """PPO: per-token GAE advantages (values and the KL penalty in the reward) in the clipped
    surrogate, no KL term in the loss: J = 1/B Σ_b 1/|o| Σ_t min(r A_t, clip(r, 1 ± ε) A_t)."""
    from dsm_engine.grpo.algorithms import (
        AlgorithmConfig,
        CoefficientInputs,
        LossSettings,
        coefficient,
        plan_update,
    )
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.step import accumulate_grads, sequence_logprobs

    state = initial_state(1)
    model, cfg = _policy(state)
    batch = random_batch(seed=5, groups=2, group_size=GROUP)
    logp, _ = sequence_logprobs(
        model, batch.tokens, batch.targets, temperature=TEMP, micro_batch_size=5
    )
    g = torch.Generator().manual_seed(3)
    old = torch.where(batch.mask, logp + 0.3 * torch.randn(logp.shape, generator=g), 0.0)
    ref = torch.where(batch.mask, logp + 0.3 * torch.randn(logp.shape, generator=g), 0.0)
    values = torch.randn(logp.shape, generator=g)
    x = CoefficientInputs(
        rewards=batch.rewards,
        mask=batch.mask,
        group_size=GROUP,
        old_logp=old,
        ref_logp=ref,
        values=values,
    )
    run = GRPOAlgoConfig(group_size=GROUP, micro_batch_size=5, mu=2, beta=0.05, clip_eps_low=0.2)
    coef = coefficient(AlgorithmConfig(name="ppo", gamma=0.9, lam=0.8), x, LossSettings.of(run))
    plan = plan_update(batch, coef, run)
    assert plan.advantages.shape == batch.mask.shape and plan.config.beta == 0.0
    model.zero_grad()
    _, metrics = accumulate_grads(
        model, plan.batch, old, ref, plan.advantages, plan.config, temperature=TEMP
    )
    assert metrics["clip_frac_low"] > 0 and metrics["clip_frac_high"] > 0

    def neg_ppo(lp):
        adv, m = coef.advantages.double(), batch.mask.double()
        r = torch.exp(lp - old.double())
        surrogate = torch.minimum(r * adv, r.clamp(0.8, 1.2) * adv)
        return -((surrogate * m).sum(1) / m.sum(1)).mean()

    _assert_same_grads(grads_as_hf(model, cfg), grads_fp64(state, cfg, batch, neg_ppo))
