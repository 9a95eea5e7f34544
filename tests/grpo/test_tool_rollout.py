"""Tool-integrated rollouts (``rollout.tools: python``): the sampler's Python blocks run in the
sandbox between rounds, the interpreter's output joins the response as tokens the loss never
sees, and the config refuses what it cannot run."""

from __future__ import annotations

import pytest

from dsm_engine.rollout.base import SamplingParams
from dsm_engine.rollout.tools import Piece, ToolOptions, stop_end, tool_rollout
from dsm_engine.sandbox import Sandbox, SandboxConfig
from dsm_engine.sandbox.tool_loop import ToolLoopConfig

EOS = 0  # a character-level "tokenizer": token = code point, 0 ends a response


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids if i != EOS)


class ScriptedSampler:
    """A ``ContinueRows`` that writes each row's scripted rounds (one string per round; a
    round ending in ``\\0`` stops on the stop token). Records every context it was given."""

    def __init__(self, scripts: list[list[str]]) -> None:
        self.scripts = scripts
        self.contexts: list[list[int]] = []

    def __call__(self, contexts, budgets, stop, params, *, rows, round_index) -> list[Piece]:
        pieces = []
        for ctx, budget in zip(contexts, budgets):
            self.contexts.append(ctx)
            row = ctx[0]  # the prompts are [row id]
            round_ = decode(ctx).count("```output\n")
            text = self.scripts[row][round_]
            ids = encode(text)[:budget]
            lps = [-0.5] * len(ids)
            pieces.append(Piece(ids, lps, bool(ids) and ids[-1] == EOS))
        return pieces


TOOL_ROUND = "Compute.\n```python\nprint(123 * 456)\n```\n```output"
ANSWER = "\nSo the answer is \\boxed{56088}.\0"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=10.0, workers=1, preload=("math",), warmup="")) as box:
        yield box


def options(sandbox, max_rounds: int = 4) -> ToolOptions:
    return ToolOptions(sandbox, ToolLoopConfig(max_rounds=max_rounds), encode, decode)


def test_tool_output_is_in_the_response_and_masked_from_the_loss(sandbox):
    from dsm_engine.grpo.batch import build_batch

    sampler = ScriptedSampler([[TOOL_ROUND, ANSWER], ["I know it: \\boxed{56088}.\0"]])
    params = SamplingParams(max_new_tokens=200, stop_token_ids=[EOS])
    out = tool_rollout(sampler, [[0], [1]], 1, params, options(sandbox))

    tool_text = "\n56088\n```\n"  # the interpreter's output block, after the model's fence
    assert decode(out.token_ids[0]) == TOOL_ROUND + tool_text + ANSWER[:-1]
    assert out.finished == [True, True]
    # exactly the interpreter's characters are flagged, with log-prob 0
    flagged = "".join(chr(t) for t, m in zip(out.token_ids[0], out.tool_mask[0]) if m)
    assert flagged == tool_text
    assert all(lp == 0.0 for lp, m in zip(out.logprobs[0], out.tool_mask[0]) if m)
    assert all(lp == -0.5 for lp, m in zip(out.logprobs[0], out.tool_mask[0]) if not m)
    assert not any(out.tool_mask[1])
    # the second round continued from the sampled ids plus the output's ids, nothing else
    assert sampler.contexts[-1] == [0, *encode(TOOL_ROUND + tool_text)]
    assert [(u.rounds, u.failed_executions) for u in out.tool_use] == [(1, 0), (0, 0)]
    assert out.tool_use[0].sandbox_s > 0

    batch = build_batch(
        [[0], [1]],
        out.token_ids,
        out.logprobs,
        [1.0, 1.0],
        out.finished,
        pad_id=EOS,
        tool_mask=out.tool_mask,
    )
    row = batch.targets[0][batch.mask[0]].tolist()
    assert decode(row) == TOOL_ROUND + ANSWER[:-1]  # the loss sees the model's tokens only
    assert int(batch.mask[0].sum()) == len(out.token_ids[0]) - len(tool_text)
    assert int(batch.mask[1].sum()) == len(out.token_ids[1])


def test_failures_round_limit_and_budget(sandbox):
    failing = "```python\nprint(1 / 0)\n```\n```output"
    sampler = ScriptedSampler([[failing, failing, failing], [TOOL_ROUND, ANSWER]])
    # row 0 asks twice with max_rounds=1: one run, then it ends at its second request
    out = tool_rollout(
        sampler,
        [[0]],
        1,
        SamplingParams(max_new_tokens=200, stop_token_ids=[EOS]),
        options(sandbox, 1),
    )
    assert out.tool_use[0].rounds == 1 and out.tool_use[0].failed_executions == 1
    assert out.tool_use[0].hit_round_limit and out.finished == [False]
    assert "ZeroDivisionError" in decode(out.token_ids[0])

    # a budget the tool output overflows: the output is cut and the response ends there
    budget = len(TOOL_ROUND) + 3
    out = tool_rollout(
        sampler,
        [[1]],
        1,
        SamplingParams(max_new_tokens=budget, stop_token_ids=[EOS]),
        options(sandbox),
    )
    assert len(out.token_ids[0]) == budget and out.finished == [False]
    assert sum(out.tool_mask[0]) == 3


def test_stop_end_keeps_through_the_token_completing_the_first_stop_string():
    ids = encode("ab```output\nmore```output")
    assert stop_end(ids, ["```output"], decode) == len("ab```output")
    assert stop_end(ids, ["b`", "```output"], decode) == len("ab`")
    assert stop_end(ids, ["nowhere"], decode) == len(ids)
    assert stop_end(ids, [], decode) == len(ids)
    assert stop_end([], ["x"], decode) == 0


def test_config_names_bad_tool_settings():
    from dsm_engine.config import ConfigError, from_dict
    from dsm_engine.grpo.config import GRPOConfig

    assert from_dict(GRPOConfig, {}).rollout.tools == "none"
    with pytest.raises(ConfigError, match=r"rollout\.tools: 'bash' is not one of"):
        from_dict(GRPOConfig, {"rollout": {"tools": "bash"}})
    both = from_dict(GRPOConfig, {"rollout": {"tools": "python", "backend": "vllm"}})
    assert (both.rollout.tools, both.rollout.backend) == ("python", "vllm")
    with pytest.raises(ConfigError, match=r"rollout\.tool_max_rounds must be >= 1"):
        from_dict(GRPOConfig, {"rollout": {"tools": "python", "tool_max_rounds": 0}})
    with pytest.raises(ConfigError, match=r"rollout\.tool_timeout_s must be > 0"):
        from_dict(GRPOConfig, {"rollout": {"tool_timeout_s": 0}})


def test_tool_metrics_summarise_the_step():
    from dsm_engine.grpo.sampling import tool_metrics
    from dsm_engine.rollout.base import ToolUse

    m = tool_metrics([ToolUse(2, 1, 0.5), ToolUse(0, 0, 0.0, False), ToolUse(1, 0, 0.25, True)])
    assert m["tool/rounds_per_sample"] == 1.0
    assert m["tool/call_rate"] == pytest.approx(2 / 3)
    assert m["tool/failed_executions"] == pytest.approx(1 / 3)
    assert m["tool/sandbox_s"] == 0.75
    assert tool_metrics(None) == {}


def test_hf_engine_stops_at_the_fence_runs_the_block_and_resumes(sandbox):
    """A real transformers model, wired so that greedy and sampled decoding follow a fixed
    script: its only path through the residual stream is ``token -> successor``."""
    import torch
    from transformers import LlamaConfig

    from dsm_engine.rollout.hf import HFRolloutEngine

    code = "Let me run it.\n```python\nprint(6 * 7)\n```\n```output"
    answer = "The answer is \\boxed{42}."
    vocab = 160
    # ids 3.. spell the code, then the answer; 120+ are the tokenizer's own ids for the
    # characters of tool outputs (what encode gives); 0 ends a response, 1 is the prompt
    chars = {3 + k: c for k, c in enumerate(code)}
    ans0 = 3 + len(code)
    chars |= {ans0 + k: c for k, c in enumerate(answer)}
    canonical = {c: 120 + k for k, c in enumerate("\n0123456789`")}
    chars |= {i: c for c, i in canonical.items()}
    succ = {1: 3, **{i: i + 1 for i in range(3, 3 + len(code) - 1)}}
    succ |= {canonical["\n"]: ans0, **{ans0 + k: ans0 + k + 1 for k in range(len(answer) - 1)}}
    succ[ans0 + len(answer) - 1] = EOS

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=vocab,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    opts = ToolOptions(
        sandbox,
        ToolLoopConfig(max_rounds=2),
        encode=lambda text: [canonical[c] for c in text],
        decode=lambda ids: "".join(chars.get(i, "") for i in ids),
    )
    engine = HFRolloutEngine(cfg, device="cpu", tools=opts)
    sd = {k: torch.zeros_like(v) for k, v in engine.model.state_dict().items()}
    sd = {k: (torch.ones_like(v) if k.endswith("norm.weight") else v) for k, v in sd.items()}
    sd["model.embed_tokens.weight"] = torch.eye(vocab)
    for i, j in succ.items():
        sd["lm_head.weight"][j, i] = 3.0  # logits gap 3 * sqrt(vocab) ~ 38: deterministic
    engine.update_weights(sd)

    for greedy in (True, False):
        params = SamplingParams(max_new_tokens=120, stop_token_ids=[EOS], greedy=greedy, seed=3)
        out = engine.generate([[1]], 2, params)
        for ids, mask, lps in zip(out.token_ids, out.tool_mask, out.logprobs):
            assert opts.decode(ids) == code + "\n42\n```\n" + answer
            assert opts.decode([i for i, m in zip(ids, mask) if m]) == "\n42\n```\n"
            assert all(lp == 0.0 for lp, m in zip(lps, mask) if m)
            assert all(-1e-3 < lp <= 0.0 for lp, m in zip(lps, mask) if not m)
        assert out.finished == [True, True]
        assert [u.rounds for u in out.tool_use] == [1, 1]
