"""The hf rollout backend returns the sampler's log-probs, equal (fp32) to the trainer's
recomputation with the same weights; bad input is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers import TINY  # noqa: E402


@pytest.fixture()
def policy():
    from dsm_engine.models import build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import destroy_parallel

    cfg = model_config(TINY)
    ctx = initialize_parallel(seed=3)
    yield cfg, build_model(cfg, ctx)
    destroy_parallel()


def test_sampler_logprobs_match_trainer_recomputation(policy):
    from dsm_engine.grpo.batch import build_batch
    from dsm_engine.grpo.sampling import sync_weights
    from dsm_engine.grpo.step import mismatch_metrics, sequence_logprobs
    from dsm_engine.models.convert import hf_config
    from dsm_engine.rollout.base import SamplingParams
    from dsm_engine.rollout.hf import HFRolloutEngine

    cfg, model = policy
    engine = HFRolloutEngine(hf_config(cfg), device="cpu")
    sync_weights(model, engine, cfg)
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14, 15]]
    for temperature in (1.0, 0.6):
        params = SamplingParams(
            temperature=temperature, max_new_tokens=12, stop_token_ids=[2], seed=4
        )
        out = engine.generate(prompts, 3, params)
        assert out.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert all(len(t) == len(lp) for t, lp in zip(out.token_ids, out.logprobs))
        batch = build_batch(
            [prompts[i] for i in out.prompt_index],
            out.token_ids,
            out.logprobs,
            [0.0] * len(out),
            out.finished,
            pad_id=0,
        )
        logp, _ = sequence_logprobs(
            model, batch.tokens, batch.targets, temperature=temperature, micro_batch_size=4
        )
        m = mismatch_metrics(logp, batch.sampler_logp, batch.mask)
        assert m["mismatch_abs"] < 1e-5 and m["mismatch_max"] < 1e-4, m
        assert abs(m["mismatch_exp_abs"] - 1.0) < 1e-5
        # the same seed and weights sample the same tokens
        assert engine.generate(prompts, 3, params).token_ids == out.token_ids


def test_sampling_draws_from_the_whole_vocabulary():
    # transformers' generate applies top-k 50 unless told otherwise: a near-uniform policy over
    # 512 tokens (distinct logits, so a top-k would cut) must give far more than 50 first tokens
    import math

    import torch

    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config
    from dsm_engine.rollout.base import SamplingParams
    from dsm_engine.rollout.hf import HFRolloutEngine

    engine = HFRolloutEngine(hf_config(model_config({**TINY, "vocab_size": 512})), device="cpu")
    with torch.no_grad():
        engine.model.lm_head.weight.normal_(0.0, 1e-4)
    out = engine.generate([[5, 6, 7]], 400, SamplingParams(max_new_tokens=1, seed=0))
    firsts = [t[0] for t in out.token_ids]
    assert len(set(firsts)) > 150, len(set(firsts))
    assert all(abs(lp[0] + math.log(512)) < 1e-2 for lp in out.logprobs)


def test_update_weights_rejects_a_foreign_state_dict(policy):
    from dsm_engine.models.convert import hf_config
    from dsm_engine.rollout.hf import HFRolloutEngine

    cfg, _ = policy
    engine = HFRolloutEngine(hf_config(cfg), device="cpu")
    sd = dict(engine.model.state_dict())
    sd.pop("lm_head.weight")
    with pytest.raises(ValueError, match="missing"):
        engine.update_weights(sd)
    with pytest.raises(ValueError, match="prompts_token_ids\\[1\\]"):
        from dsm_engine.rollout.base import SamplingParams

        engine.generate([[1], []], 2, SamplingParams())
