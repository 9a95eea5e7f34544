"""The vllm rollout backend asks vLLM for what the trainer needs (checked against vLLM 0.33.0).

vLLM needs a GPU, so a recording stand-in with vLLM 0.33.0's call surface (``LLM(**kwargs)``,
``LLM.generate(prompts, [SamplingParams], use_tqdm=)``, ``LLM.apply_model(fn)``,
``LLM.reset_prefix_cache()``, ``RequestOutput.outputs[j].token_ids / logprobs / finish_reason``)
takes its place: these tests pin the arguments that decide correctness (temperature-scaled
log-probs, in-process weights, stop tokens, seeds) and the conversion of the outputs. For
tool-integrated rollouts a scripted stand-in writes a Python block, then its answer once it
sees the interpreter's output, and the real sandbox runs the block between rounds.
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


def _build_engine(monkeypatch, llm_cls, vocab_size: int = 32, **kwargs):
    from transformers import LlamaConfig

    fake = types.ModuleType("vllm")
    fake.LLM = llm_cls
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    # setenv first so that the variable the engine sets is removed again after the test
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "unset")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    from dsm_engine.rollout.vllm import VLLMRolloutEngine

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        dtype="bfloat16",
    )
    return VLLMRolloutEngine(cfg, **kwargs)


@pytest.fixture
def engine(monkeypatch):
    return _build_engine(monkeypatch, _FakeLLM)


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


# -- tool-integrated rollouts ----------------------------------------------------------------

EOS = 0  # a character-level "tokenizer": token = code point, 0 ends a response
TOOL_ROUND = "Compute.\n```python\nprint(123 * 456)\n```\n```output"
ANSWER = "\nSo the answer is \\boxed{56088}.\0"
TOOL_TEXT = "\n56088\n```\n"  # what the shared loop appends after the model's fence
DIRECT = "I know it: \\boxed{56088}.\0"
SCRIPTS = {0: [TOOL_ROUND + "\nnever reached", ANSWER], 1: [DIRECT]}
FAILING = "```python\nprint(1 / 0)\n```\n```output"


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids if i != EOS)


class _ScriptedLLM(_FakeLLM):
    """Writes ``SCRIPTS[prompt][round]`` (the round: how many outputs its context holds) one
    token per step the way vLLM stops: on a stop token, or once the detokenised new text holds
    a stop string, which it keeps (``include_stop_str_in_output``); like a speculative step it
    then overruns the stop string by one token. Log-prob of a round-``r`` token: -(r + 1) / 4."""

    scripts = SCRIPTS

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds: list[tuple[list[list[int]], list[types.SimpleNamespace]]] = []

    def generate(self, prompts, sampling_params, *, use_tqdm):
        self.rounds.append(([p["prompt_token_ids"] for p in prompts], list(sampling_params)))
        results = []
        for p, sp in zip(prompts, sampling_params):
            assert sp.n == 1 and sp.include_stop_str_in_output and sp.detokenize
            ctx = p["prompt_token_ids"]
            round_ = decode(ctx).count("```output\n")
            script = encode(self.scripts[ctx[0]][round_])
            toks, reason = [], "length"
            while len(toks) < sp.max_tokens and len(toks) < len(script):
                toks.append(script[len(toks)])
                if toks[-1] in sp.stop_token_ids:
                    reason = "stop"
                    break
                if any(s in decode(toks) for s in sp.stop):
                    reason = "stop"
                    toks = script[: len(toks) + 1][: sp.max_tokens]  # the overrun token
                    break
            lp = -(round_ + 1) / 4
            comp = types.SimpleNamespace(
                token_ids=toks, logprobs=[{t: _Logprob(lp)} for t in toks], finish_reason=reason
            )
            results.append(types.SimpleNamespace(outputs=[comp]))
        return results


@pytest.fixture(scope="module")
def sandbox():
    from dsm_engine.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=10.0, workers=1, preload=("math",), warmup="")) as box:
        yield box


def _tool_engine(monkeypatch, sandbox, max_rounds: int = 4, scripts=SCRIPTS):
    from dsm_engine.rollout.tools import ToolOptions
    from dsm_engine.sandbox.tool_loop import ToolLoopConfig

    llm_cls = type("_LLM", (_ScriptedLLM,), {"scripts": scripts})
    opts = ToolOptions(sandbox, ToolLoopConfig(max_rounds=max_rounds), encode, decode, "{}")
    return _build_engine(monkeypatch, llm_cls, vocab_size=128, tools=opts)


def test_tool_rounds_batch_the_unfinished_rows_and_mask_the_interpreter_output(
    monkeypatch, sandbox
):
    engine = _tool_engine(monkeypatch, sandbox)
    params = SamplingParams(temperature=0.7, max_new_tokens=200, stop_token_ids=[EOS], seed=3)
    out = engine.generate([[1], [0]], 2, params)  # rows 0, 1 answer; rows 2, 3 run the tool

    expected = encode(TOOL_ROUND) + encode(TOOL_TEXT) + encode(ANSWER)
    assert out.token_ids == [encode(DIRECT)] * 2 + [expected] * 2
    assert out.finished == [True] * 4 and out.prompt_index == [0, 0, 1, 1]
    for ids, mask, lps in zip(out.token_ids[2:], out.tool_mask[2:], out.logprobs[2:]):
        # the overrun token after the fence is gone; exactly the interpreter's text is flagged
        assert "".join(chr(t) for t, m in zip(ids, mask) if m) == TOOL_TEXT
        n1, n2 = len(TOOL_ROUND), len(TOOL_TEXT)
        assert lps == [-0.25] * n1 + [0.0] * n2 + [-0.5] * len(ANSWER)
    assert not any(out.tool_mask[0]) and out.logprobs[0] == [-0.25] * len(DIRECT)
    assert [(u.rounds, u.failed_executions, u.hit_round_limit) for u in out.tool_use] == [
        (0, 0, False)
    ] * 2 + [(1, 0, False)] * 2
    assert out.tool_use[2].sandbox_s > 0

    # one generate per round; round 2 continues only rows 2, 3 from their exact ids so far
    (ctx1, sps1), (ctx2, sps2) = engine.llm.rounds
    assert ctx1 == [[1], [1], [0], [0]]
    assert ctx2 == [[0, *encode(TOOL_ROUND + TOOL_TEXT)]] * 2
    assert all("```output" in sp.stop for sp in sps1 + sps2)
    assert [sp.max_tokens for sp in sps2] == [200 - len(TOOL_ROUND + TOOL_TEXT)] * 2
    assert all(sp.temperature == 0.7 and sp.logprobs == 0 for sp in sps1 + sps2)
    # a row's stream depends on (row, round) only; round 0 is the plain path's stream
    base = 3 << 32
    assert [sp.seed for sp in sps1] == [base + j for j in range(4)]
    assert [sp.seed for sp in sps2] == [base + (1 << 24) + 2, base + (1 << 24) + 3]


def test_tool_round_limit_ends_the_sample(monkeypatch, sandbox):
    engine = _tool_engine(monkeypatch, sandbox, 1, {0: [FAILING] * 3})
    out = engine.generate([[0]], 1, SamplingParams(max_new_tokens=300, stop_token_ids=[EOS]))
    assert len(engine.llm.rounds) == 2  # one run, then it ends at its second request
    (use,) = out.tool_use
    assert (use.rounds, use.failed_executions, use.hit_round_limit) == (1, 1, True)
    assert out.finished == [False]
    text = decode(out.token_ids[0])
    assert text.startswith(FAILING) and text.endswith(FAILING) and "ZeroDivisionError" in text
    flagged = "".join(chr(t) for t, m in zip(out.token_ids[0], out.tool_mask[0]) if m)
    assert "ZeroDivisionError" in flagged and "print" not in flagged


def test_tool_engine_loads_the_tokenizer_vllm_matches_stop_strings_with(monkeypatch, sandbox):
    import json
    import os

    from dsm_engine.config import ConfigError
    from dsm_engine.rollout.tools import ToolOptions
    from dsm_engine.sandbox.tool_loop import ToolLoopConfig

    engine = _tool_engine(monkeypatch, sandbox)
    kw = engine.llm.kwargs
    assert kw["skip_tokenizer_init"] is False and kw["tokenizer"] == kw["model"]
    with open(os.path.join(kw["tokenizer"], "tokenizer.json")) as f:
        assert f.read() == "{}"
    with open(os.path.join(kw["tokenizer"], "tokenizer_config.json")) as f:
        assert json.load(f)["tokenizer_class"] == "PreTrainedTokenizerFast"
    no_tokenizer = ToolOptions(sandbox, ToolLoopConfig(), encode, decode)
    with pytest.raises(ConfigError, match="tokenizer_json"):
        _build_engine(monkeypatch, _ScriptedLLM, tools=no_tokenizer)
