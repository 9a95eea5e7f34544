"""``dsm eval --format pot|tir``: prompts, execution, grading and the records they write."""

from __future__ import annotations

import json

import pytest

from dsm_engine.eval import cli
from dsm_engine.eval.benchmarks import Example, load_benchmark
from dsm_engine.eval.formats import generate_format
from dsm_engine.eval.generation import GenerationConfig, truncate_at_stop
from dsm_engine.eval.tool_prompts import (
    _POT_MATH,
    _POT_WORD,
    _TIR_EN,
    _TIR_ZH,
    build_pot_prompt,
    build_tir_prompt,
)
from dsm_engine.rewards import grade_batch
from dsm_engine.sandbox import Sandbox, SandboxConfig
from dsm_engine.sandbox.tir_format import python_blocks, split_tool_outputs

COT_KEYS = {"id", "prompt", "gold", "output", "answer", "correct"}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=20, workers=2)) as box:
        yield box


def test_exemplar_programs_print_their_answers(sandbox):
    golds = ["42", "85", "110", "16", "7", "8\\sqrt{2}", "9", "\\frac{5}{36}"]
    programs = [program for _, program in _POT_WORD + _POT_MATH]
    results = sandbox.run_many(programs)
    assert all(r.ok for r in results), [r.error for r in results]
    answers = [f"\\boxed{{{r.stdout.strip().splitlines()[-1]}}}" for r in results]
    kinds = ["gsm8k"] * len(_POT_WORD) + ["math"] * len(_POT_MATH)
    assert all(g.correct for g in grade_batch(answers, golds, kinds))


def test_tool_integrated_exemplars_show_the_output_their_code_prints(sandbox):
    for _, solution in _TIR_EN + _TIR_ZH:
        spans = split_tool_outputs(solution)
        shown = [
            s.text.strip("\n").removesuffix("```").strip("\n") for s in spans if s.source == "tool"
        ]
        printed = [r.stdout.strip("\n") for r in sandbox.run_many(python_blocks(solution))]
        assert printed == shown


def test_prompts_end_where_the_model_takes_over(shared_data):
    bench = shared_data / "benchmarks"
    gsm = load_benchmark("gsm8k", bench, limit=1)[0]
    pot = build_pot_prompt(gsm, shots=2)
    assert pot.endswith(
        f"Question: {gsm.question}\nWrite a Python program that prints the final answer.\n```python\n"
    )
    assert pot.count("```python") == 3
    cmath = load_benchmark("cmath", bench, limit=1)[0]
    assert build_tir_prompt(cmath).endswith("\\boxed{} 中。\n解答:")
    with pytest.raises(ValueError, match="English only"):
        build_pot_prompt(cmath)
    with pytest.raises(ValueError, match="--shots 5"):
        build_tir_prompt(gsm, shots=5)


def test_truncation_can_keep_the_stop_string():
    assert truncate_at_stop("a```output\nb", ["```output"]) == "a"
    assert truncate_at_stop("a```output\nb", ["```output"], keep=True) == "a```output"
    assert truncate_at_stop("no stop", ["```output"], keep=True) == "no stop"


class ScriptedGenerator:
    """A Generator that answers each prompt from a script, round by round."""

    def __init__(self, replies):
        self.replies = replies
        self.configs = []

    def generate(self, prompts, config, on_batch=None):
        self.configs.append(config)
        out = []
        for p in prompts:
            turn = p.count("```output\n")  # tool outputs appended so far
            out.append([truncate_at_stop(self.replies[turn], config.stop, config.keep_stop)])
        return out


def _example(gold="1024"):
    return Example("0", "What is 2 to the tenth?", gold, "gsm8k", "en")


def test_program_of_thought_grades_what_the_program_prints(sandbox):
    gen = ScriptedGenerator(["x = 2 ** 10\nprint(x)\n```\nQuestion: next"])
    done = generate_format("pot", gen, [_example()], ["p"], GenerationConfig(), sandbox=sandbox)
    assert done.outputs == [["x = 2 ** 10\nprint(x)\n"]]
    assert done.graded == [["\\boxed{1024}"]] and done.tool[0][0]["status"] == "ok"
    broken = ScriptedGenerator(["print(1/0)\n```"])
    failed = generate_format(
        "pot", broken, [_example()], ["p"], GenerationConfig(), sandbox=sandbox
    )
    assert failed.graded == [[""]] and "ZeroDivisionError" in failed.tool[0][0]["error"]


def test_tool_integrated_generation_runs_code_between_rounds(sandbox):
    gen = ScriptedGenerator(
        ["Let me compute.\n```python\nprint(2 ** 10)\n```\n```output\nbogus", "So \\boxed{1024}."]
    )
    done = generate_format(
        "tir", gen, [_example()], ["Answer: "], GenerationConfig(num_samples=2), sandbox=sandbox
    )
    expected = (
        "Let me compute.\n```python\nprint(2 ** 10)\n```\n```output\n1024\n```\nSo \\boxed{1024}."
    )
    assert done.outputs == [[expected, expected]] and done.graded == done.outputs
    assert done.tool[0][0]["rounds"] == 1 and done.tool[0][0]["executions"][0]["stdout"] == "1024\n"
    assert gen.configs[0].keep_stop and "```output" in gen.configs[0].stop


@pytest.mark.parametrize(
    "fmt, benches", [("pot", "gsm8k,math"), ("tir", "gsm8k,math,cmath,mgsm-zh")]
)
def test_tool_formats_write_the_same_records_as_chain_of_thought(
    tiny_hf_model, tmp_path, shared_data, fmt, benches
):
    out = tmp_path / fmt
    argv = [
        "--model",
        str(tiny_hf_model),
        "--out",
        str(out),
        "--data-dir",
        str(shared_data / "benchmarks"),
    ]
    argv += ["--bench", benches, "--limit", "3", "--max-new-tokens", "8", "--format", fmt]
    assert cli.main(argv + (["--shots", "1"] if fmt == "pot" else [])) == 0
    for bench in benches.split(","):
        records = [
            json.loads(line) for line in (out / f"samples_{bench}.jsonl").read_text().splitlines()
        ]
        assert len(records) == 3
        for r in records:
            assert set(r) == COT_KEYS | {"tool"}
            assert isinstance(r["correct"], bool) and isinstance(r["output"], str)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["format"] == fmt
    table = (out / "summary.md").read_text()
    label = {"pot": "PoT", "tir": "TIR"}[fmt]
    assert f"(paper) | {label} |" in table and "| model | metric | gsm8k |" in table


def test_a_format_refuses_benchmarks_the_paper_does_not_report(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--model", "m", "--format", "pot", "--bench", "gsm8k,cmath"])
    assert "--format pot runs on gsm8k,math,math500 only, not ['cmath']" in capsys.readouterr().err
