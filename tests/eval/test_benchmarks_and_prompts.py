"""Benchmark loaders and prompt templates."""

from __future__ import annotations

import json

import pytest

from dsm_engine.eval.benchmarks import BENCHMARKS, load_benchmark
from dsm_engine.eval.prompts import _ZH_EXEMPLARS, INSTRUCTIONS, build_prompt, few_shot_exemplars
from dsm_engine.rewards import grade_batch

SIZES = {
    "gsm8k": 1319,
    "math": 5000,
    "math500": 500,
    "cmath": 1098,
    "gaokao-mathqa": 351,
    "gaokao-mathcloze": 118,
    "mgsm-zh": 250,
}


@pytest.fixture(scope="module")
def bench_dir(shared_data):
    return shared_data / "benchmarks"


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_loads_whole_with_unique_ids_and_usable_golds(name, bench_dir):
    examples = load_benchmark(name, bench_dir)
    assert len(examples) == SIZES[name]
    assert len({e.id for e in examples}) == len(examples)
    assert all(e.question and e.gold for e in examples)
    # each gold answer, written as a model would, is graded right
    outputs = [f"The answer is \\boxed{{{e.gold}}}." for e in examples]
    if name == "gaokao-mathcloze":
        outputs = [
            "".join(f"\\boxed{{{part.strip('$')}}}" for part in e.gold.split(";")) for e in examples
        ]
    grades = grade_batch(outputs, [e.gold for e in examples], [e.kind for e in examples])
    assert sum(g.correct for g in grades) / len(grades) >= 0.99


def test_multiple_choice_questions_keep_their_options(bench_dir):
    example = load_benchmark("gaokao-mathqa", bench_dir, limit=1)[0]
    assert example.kind == "choice" and len(example.choices) == 4 and example.gold == "D"
    prompt = build_prompt(example, 0, bench_dir)
    assert all(option in prompt for option in example.choices)
    assert INSTRUCTIONS["choice"] in prompt


def test_limit_and_errors_name_the_problem(bench_dir, tmp_path):
    assert len(load_benchmark("cmath", bench_dir, limit=7)) == 7
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("sat", bench_dir)
    with pytest.raises(FileNotFoundError, match="data-dir"):
        load_benchmark("gsm8k", tmp_path)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:1: bad gsm8k row"):
        load_benchmark("gsm8k", tmp_path)


def test_zero_shot_prompt_is_question_plus_cot_instruction(bench_dir):
    example = load_benchmark("gsm8k", bench_dir, limit=1)[0]
    prompt = build_prompt(example, 0, bench_dir)
    assert prompt == f"Question: {example.question}\n{INSTRUCTIONS['en']}\nAnswer:"
    zh = load_benchmark("cmath", bench_dir, limit=1)[0]
    assert build_prompt(zh, 0, bench_dir).endswith(f"{INSTRUCTIONS['zh']}\n解答:")


def test_english_exemplars_come_from_gsm8k_train_never_from_a_test_set(bench_dir):
    example = load_benchmark("math", bench_dir, limit=1)[0]
    exemplars = few_shot_exemplars(example, 4, bench_dir)
    with open(bench_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        train = {json.loads(line)["question"] for line in f}
    tests = {e.question for name in ("gsm8k", "math") for e in load_benchmark(name, bench_dir)}
    assert len(exemplars) == 4
    for question, solution in exemplars:
        assert question in train and question not in tests
        assert "<<" not in solution and "\\boxed{" in solution
    prompt = build_prompt(example, 4, bench_dir)
    assert prompt.count("Question:") == 5 and prompt.endswith("Answer:")
    # a fixed seed: the same exemplars every run
    assert few_shot_exemplars(example, 4, bench_dir) == exemplars


def test_chinese_exemplars_are_not_test_questions_and_are_self_consistent(bench_dir):
    tests = {e.question for name in ("cmath", "mgsm-zh") for e in load_benchmark(name, bench_dir)}
    assert not {q for q, _ in _ZH_EXEMPLARS} & tests
    example = load_benchmark("cmath", bench_dir, limit=1)[0]
    with pytest.raises(ValueError, match="only"):
        few_shot_exemplars(example, 99, bench_dir)
    for name in ("cmath", "gaokao-mathqa", "gaokao-mathcloze"):
        example = load_benchmark(name, bench_dir, limit=1)[0]
        prompt = build_prompt(example, 3, bench_dir)
        assert prompt.count("问题:") == 4
