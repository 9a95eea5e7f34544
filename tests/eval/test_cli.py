"""``dsm eval`` end to end on a tiny random model: files, sampling, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dsm_engine.eval import cli
from dsm_engine.eval.report import read_records

BENCHES = "gsm8k,math,cmath,gaokao-mathqa,gaokao-mathcloze,mgsm-zh"


def _args(model, out, data, *extra):
    return [
        "--model",
        str(model),
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--max-new-tokens",
        "8",
        *extra,
    ]


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_greedy_eval_on_every_benchmark_writes_samples_and_summary(
    tiny_hf_model, tmp_path, shared_data
):
    out = tmp_path / "run"
    start = time.monotonic()
    argv = _args(
        tiny_hf_model, out, shared_data / "benchmarks", "--bench", BENCHES, "--limit", "20"
    )
    assert cli.main([*argv, "--batch-size", "20"]) == 0
    assert time.monotonic() - start < 120
    for bench in BENCHES.split(","):
        records = _lines(out / f"samples_{bench}.jsonl")
        assert len(records) == 20 and len({r["id"] for r in records}) == 20
        for r in records:
            assert set(r) >= {"id", "prompt", "output", "answer", "gold", "correct"}
            assert r["prompt"].endswith(("Answer:", "解答:"))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == set(BENCHES.split(","))
    assert all(m["n"] == 20 and 0 <= m["pass@1"] <= 100 for m in summary["results"].values())
    table = (out / "summary.md").read_text()
    assert "| model | metric | gsm8k |" in table and "DeepSeekMath-RL 7B (paper)" in table


def test_sampled_eval_reports_maj_and_pass_at_n(tiny_hf_model, tmp_path, shared_data):
    out = tmp_path / "sampled"
    argv = _args(tiny_hf_model, out, shared_data / "benchmarks", "--bench", "gsm8k", "--limit", "4")
    assert cli.main([*argv, "--samples", "3", "--vote", "majority", "--shots", "1"]) == 0
    records = _lines(out / "samples_gsm8k.jsonl")
    assert len(records) == 4
    for r in records:
        assert len(r["outputs"]) == len(r["answers"]) == len(r["corrects"]) == 3
        assert {"maj_answer", "maj_votes", "maj_correct"} <= set(r)
    results = json.loads((out / "summary.json").read_text())["results"]["gsm8k"]
    assert set(results) == {"n", "pass@1", "maj@3", "pass@3"}
    # other settings in the same folder are refused instead of mixing runs
    with pytest.raises(SystemExit, match="other settings"):
        cli.main([*argv, "--samples", "5"])


def test_resume_generates_only_missing_questions(tiny_hf_model, tmp_path, shared_data, monkeypatch):
    out = tmp_path / "resume"
    argv = _args(
        tiny_hf_model, out, shared_data / "benchmarks", "--bench", "cmath", "--limit", "12"
    )
    assert cli.main(argv) == 0
    path = out / "samples_cmath.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # as if killed while writing the 6th record
    path.write_text("".join(lines[:5]) + lines[5][:17], encoding="utf-8")

    asked: list[str] = []
    real = cli.load_generator

    def counting(*a, **k):
        generator = real(*a, **k)
        inner = generator.generate

        def generate(prompts, config, on_batch=None):
            asked.extend(prompts)
            return inner(prompts, config, on_batch)

        generator.generate = generate
        return generator

    monkeypatch.setattr(cli, "load_generator", counting)
    assert cli.main(argv) == 0
    records = read_records(path)
    assert [r["id"] for r in records] == [str(i) for i in range(12)]
    assert path.read_text(encoding="utf-8").startswith("".join(lines[:5]))
    assert len(asked) == 7
    # greedy decoding: the regenerated records equal the first run's
    assert [json.loads(line) for line in lines] == records


@pytest.mark.slow  # a fresh interpreter importing transformers, then a kill and a resume
def test_a_killed_run_continues_where_it_stopped(tiny_hf_model, tmp_path, shared_data):
    out = tmp_path / "killed"
    argv = _args(
        tiny_hf_model, out, shared_data / "benchmarks", "--bench", "gsm8k", "--limit", "40"
    )
    argv += ["--batch-size", "2", "--max-new-tokens", "24"]  # 8 questions per append
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "dsm_engine.cli", "eval", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = out / "samples_gsm8k.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if path.is_file() and path.read_text().count("\n") >= 8:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    written = len(read_records(path))
    assert 8 <= written < 40
    assert cli.main(argv) == 0
    records = read_records(path)
    assert sorted(int(r["id"]) for r in records) == list(range(40))


def test_a_dsm_checkpoint_evaluates_like_the_hugging_face_model_it_came_from(
    tiny_hf_model, tmp_path, shared_data
):
    from dsm_engine.cli import main as dsm

    ckpt = tmp_path / "dsm-ckpt"
    assert dsm(["convert", "hf-to-dsm", "--hf", str(tiny_hf_model), "--out", str(ckpt)]) == 0
    data = shared_data / "benchmarks"
    for name, model in (("hf", tiny_hf_model), ("dsm", ckpt)):
        argv = _args(model, tmp_path / name, data, "--bench", "gsm8k", "--limit", "3")
        assert cli.main(argv) == 0
    from_hf = _lines(tmp_path / "hf" / "samples_gsm8k.jsonl")
    from_dsm = _lines(tmp_path / "dsm" / "samples_gsm8k.jsonl")
    assert [r["output"] for r in from_dsm] == [r["output"] for r in from_hf]
