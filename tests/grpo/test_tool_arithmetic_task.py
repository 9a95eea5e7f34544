"""The tool-arithmetic demo's data: tool-using solutions are in the tir format (the block's
program prints the answer, the output block holds it), and the splits never share a problem."""

from __future__ import annotations

from dsm_engine.recipes import tool_arithmetic as demo
from dsm_engine.sandbox.tir_format import python_blocks, split_tool_outputs


def test_tool_solution_is_tir_and_its_program_prints_the_answer():
    for p in demo.make_problems("train", 20, seed=0):
        text = p.tool_solution()
        (block,) = python_blocks(text)
        assert eval(block.strip().removeprefix("print(").removesuffix(")")) == p.answer
        tool = [s.text for s in split_tool_outputs(text) if s.source == "tool"]
        assert tool == [f"\n{p.answer}\n```\n"]
        assert text.endswith(f"\\boxed{{{p.answer}}}.")
        assert p.direct_solution() == f" The answer is \\boxed{{{p.answer}}}."


def test_splits_are_disjoint_and_the_mix_follows_tool_fraction():
    train = {p.question for p in demo.make_problems("train", 500, seed=0)}
    held = {p.question for p in demo.make_problems("heldout", 100, seed=1)}
    pre = {p.question for p in demo.make_problems("pretrain", 500, seed=0)}
    assert not (train & held) and not (train & pre) and not (held & pre)
    docs = demo.pretraining_texts(1000, seed=0, tool_fraction=0.3)
    share = sum("```python" in d for d in docs) / len(docs)
    assert 0.25 < share < 0.35
