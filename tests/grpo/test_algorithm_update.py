"""A coefficient plugged into the GRPO update (``plan_update`` -> ``accumulate_grads``, what
``grpo_updates`` runs per step) on a tiny megatron-core policy: RFT's gradient is SFT's on the
correct samples only, the gradient of their mean per-token log-likelihood written out in
float64 on a Hugging Face copy of the policy; SFT's is the same over every sample."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import TINY, grads_as_hf, random_batch  # noqa: E402
from step_worker import TEMP, initial_state  # noqa: E402

GROUP = 4


def mean_loglik_grads_fp64(hf_state, cfg, batch, rows):
    """Gradients of -1/|rows| Σ_rows 1/|o| Σ_t log π(o_t) in float64, by Hugging Face name."""
    from transformers import LlamaForCausalLM

    from dsm_engine.models.convert import hf_config

    hcfg = hf_config(cfg)
    hcfg._attn_implementation = "eager"
    model = LlamaForCausalLM(hcfg).double()
    model.load_state_dict({k: v.double() for k, v in hf_state.items()})
    logits = model(input_ids=batch.tokens[rows]).logits.double() / TEMP
    logp = torch.log_softmax(logits, -1).gather(-1, batch.targets[rows][..., None]).squeeze(-1)
    m = batch.mask[rows].double()
    loss = -((logp * m).sum(1) / m.sum(1)).mean()
    loss.backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


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
    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import load_hf_weights

    state = initial_state(0)
    cfg = model_config(TINY)
    ctx = initialize_parallel(ParallelConfig(), seed=1)
    model = build_model(cfg, ctx, init_weights=False)
    load_hf_weights(model, state.__getitem__, cfg)
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
    got = grads_as_hf(model, cfg)
    want = mean_loglik_grads_fp64(state, cfg, batch, kept)
    assert set(got) == set(want)
    for k, g in want.items():
        torch.testing.assert_close(got[k].double(), g, rtol=1e-4, atol=1e-6, msg=k)
