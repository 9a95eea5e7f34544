"""The vllm rollout backend asks vLLM for what the trainer needs (checked against vLLM 0.33.0).

vLLM needs a GPU, so a recording stand-in with vLLM 0.33.0's call surface (``LLM(**kwargs)``,
``LLM.generate(prompts, [SamplingParams], use_tqdm=)``, ``LLM.apply_model(fn)``,
``LLM.reset_prefix_cache()``, ``RequestOutput.outputs[j].token_ids / logprobs / finish_reason``)
takes its place: these tests pin the arguments that decide correctness (temperature-scaled
log-probs, in-process weights, stop tokens, seeds) and the conversion of the outputs.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch

from dsm_engine.rollout.base import SamplingParams


@dataclass
class _Logprob:
    logprob: float


class _FakeModel:
    def __init__(self) -> None:
        self.loaded: list[tuple[str, torch.Tensor]] = []

    def load_weights(self, weights):
        self.loaded.extend(weights)
        return {name for name, _ in self.loaded}


class _FakeLLM:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.llm_engine = types.SimpleNamespace(model_executor=object())
        self.model = _FakeModel()
        self.calls: list[str] = []
        self.sampling: list[types.SimpleNamespace] = []

    def apply_model(self, fn):
        self.calls.append("apply_model")
        return [fn(self.model)]

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True

    def generate(self, prompts, sampling_params, *, use_tqdm):
        assert len(sampling_params) == len(prompts)
        self.sampling = list(sampling_params)
        results = []
        for p, sp in zip(prompts, sampling_params):
            last = p["prompt_token_ids"][-1]
            outs = [
                types.SimpleNamespace(
                    token_ids=[last, 7] if j % 2 == 0 else [last, last],
                    logprobs=[{last: _Logprob(-0.5)}, {7 if j % 2 == 0 else last: _Logprob(-1.5)}],
                    finish_reason="stop" if j % 2 == 0 else "length",
                )
                for j in range(sp.n)
            ]
            results.append(types.SimpleNamespace(outputs=outs))
        return results


@pytest.fixture
def engine(monkeypatch, tmp_path):
    from transformers import LlamaConfig

    fake = types.ModuleType("vllm")
    fake.LLM = _FakeLLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    # setenv first so that the variable the engine sets is removed again after the test
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "unset")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    from dsm_engine.rollout.vllm import VLLMRolloutEngine

    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        dtype="bfloat16",
    )
    return VLLMRolloutEngine(cfg)


def test_engine_runs_in_process_and_returns_temperature_scaled_logprobs(engine):
    import os

    kw = engine.llm.kwargs
    assert kw["logprobs_mode"] == "processed_logprobs"  # vLLM's default is raw (pre-temperature)
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] is True
    assert kw["dtype"] == "bfloat16"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_generate_asks_for_sampled_logprobs_own_stop_tokens_and_distinct_seeds(engine):
    params = SamplingParams(temperature=0.7, max_new_tokens=5, stop_token_ids=[7], seed=3)
    out = engine.generate([[1, 2], [3, 4, 5]], 2, params)
    sps = engine.llm.sampling
    for sp in sps:
        assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens) == (2, 0.7, 1.0, 5)
        assert sp.logprobs == 0 and sp.ignore_eos is True and sp.stop_token_ids == [7]
    # vLLM seeds the n samples of a request seed, seed+1, ...: no two rows may share a stream.
    rows = {sp.seed + j for sp in sps for j in range(sp.n)}
    assert len(rows) == 4
    assert out.prompt_index == [0, 0, 1, 1]
    assert out.token_ids == [[2, 7], [2, 2], [5, 7], [5, 5]]
    assert out.logprobs == [[-0.5, -1.5]] * 4
    assert out.finished == [True, False, True, False]


def test_greedy_sampling_is_temperature_zero(engine):
    engine.generate([[1]], 1, SamplingParams(greedy=True, top_p=0.5))
    (sp,) = engine.llm.sampling
    assert sp.temperature == 0.0 and sp.top_p == 1.0


def test_update_weights_loads_in_memory_then_drops_the_stale_prefix_cache(engine):
    sd = {"model.embed_tokens.weight": torch.ones(32, 16), "lm_head.weight": torch.zeros(32, 16)}
    engine.update_weights(sd)
    assert [n for n, _ in engine.llm.model.loaded] == list(sd)
    assert engine.llm.calls == ["apply_model", "reset_prefix_cache"]
