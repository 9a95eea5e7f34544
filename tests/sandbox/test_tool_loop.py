"""Tool-integrated reasoning: the solution format and the generate -> execute -> append loop."""

from __future__ import annotations

import pytest

from dsm_engine.sandbox.tir_format import (
    Span,
    format_output,
    program_for,
    python_blocks,
    split_tool_outputs,
)
from dsm_engine.sandbox.tool_loop import Continuation, ToolLoopConfig, run_tool_loop

SOLUTION = (
    "Let me multiply.\n```python\nprint(12 * 34)\n```\n```output\n408\n```\n"
    "Then add one.\n```python\nprint(408 + 1)\n```\n```output\n409\n```\nSo \\boxed{409}."
)


def test_a_solution_splits_into_model_and_tool_spans_that_rejoin_exactly():
    spans = split_tool_outputs(SOLUTION)
    assert "".join(s.text for s in spans) == SOLUTION
    assert [s.source for s in spans] == ["model", "tool", "model", "tool", "model"]
    assert spans[1] == Span("\n408\n```\n", "tool")
    assert spans[0].text.endswith("```output")  # the model asks for the run; the tool answers
    assert split_tool_outputs("plain chain of thought") == [Span("plain chain of thought", "model")]
    # an unclosed output block (a truncated solution) is the tool's to its end
    assert split_tool_outputs("x\n```output\n40")[-1] == Span("\n40", "tool")
    # the fence inside prose, not opening a block, is the model's
    assert split_tool_outputs("say ```output now") == [Span("say ```output now", "model")]


def test_blocks_outputs_and_notebook_like_programs():
    assert python_blocks(SOLUTION) == ["print(12 * 34)\n", "print(408 + 1)\n"]
    assert format_output("408\n") == "\n408\n```\n"
    long = format_output("x" * 100 + "y" * 100, max_chars=40)
    assert long.startswith("\n" + "x" * 20 + "\n...\n" + "y" * 20)
    assert program_for(["a = 2\n", "print(a)\n"], replay=False) == "print(a)\n"
    with pytest.raises(ValueError):
        program_for([])


def test_earlier_blocks_are_replayed_quietly_before_the_last(sandbox):
    blocks = ["a = 6\nprint('hidden')\n", "1 / 0\n", "print(a * 7)\n"]
    result = sandbox.run(program_for(blocks))
    assert result.ok and result.stdout == "42\n"


class ScriptedModel:
    """A stand-in policy: per prompt, a list of continuations, one per round."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def __call__(self, prompts, stop):
        self.calls.append((list(prompts), tuple(stop)))
        out = []
        for prompt in prompts:
            key = next(k for k in self.script if prompt.startswith(k))
            turns = self.script[key]
            done = sum(p.startswith(key) for calls, _ in self.calls[:-1] for p in calls)
            out.append(Continuation(turns[done], extra={"round": done}))
        return out


def test_the_loop_runs_code_appends_outputs_and_resumes(sandbox):
    model = ScriptedModel(
        {
            "Q1": [
                "Compute.\n```python\nprint(2 ** 10)\n```\n```output",
                "So \\boxed{1024}.",
            ],
            "Q2": ["No code needed: \\boxed{3}."],
            "Q3": ["```python\nprint(undefined)\n```\n```output", "Oops, \\boxed{0}."],
        }
    )
    traces = run_tool_loop(["Q1:", "Q2:", "Q3:"], model, sandbox, ToolLoopConfig(stop=("\nQ",)))
    assert traces[0].text == (
        "Compute.\n```python\nprint(2 ** 10)\n```\n```output\n1024\n```\nSo \\boxed{1024}."
    )
    assert traces[0].rounds == 1 and traces[0].executions[0].ok
    assert [s.source for s in traces[0].spans] == ["model", "tool", "model"]
    assert traces[0].model_extras == [{"round": 0}, {"round": 1}]
    assert traces[1].rounds == 0 and traces[1].text == "No code needed: \\boxed{3}."
    assert "NameError: name 'undefined' is not defined" in traces[2].spans[1].text
    assert traces[2].failed_executions == 1
    # round 2 asks only the samples that ran code, each with its grown prompt
    assert model.calls[1][0] == [
        "Q1:" + traces[0].spans[0].text + traces[0].spans[1].text,
        "Q3:" + traces[2].spans[0].text + traces[2].spans[1].text,
    ]
    assert model.calls[0][1] == ("```output", "\nQ")


def test_the_round_limit_ends_a_sample_that_keeps_asking(sandbox):
    ask = "```python\nprint(1)\n```\n```output"
    model = ScriptedModel({"Q": [ask] * 5})
    (trace,) = run_tool_loop(["Q"], model, sandbox, ToolLoopConfig(max_rounds=2))
    assert trace.rounds == 2 and trace.hit_round_limit
    assert trace.text.count("```output\n1\n```") == 2 and trace.text.endswith(ask)


def test_generate_must_answer_every_prompt(sandbox):
    with pytest.raises(ValueError, match="1 continuations for 2 prompts"):
        run_tool_loop(["a", "b"], lambda prompts, stop: [Continuation("x")], sandbox)
