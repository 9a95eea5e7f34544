"""``dsm eval`` on bad input: one line naming the file, line and field, exit 2 (issue 23, item 4);
a model folder without a tokenizer is evaluated with ``--tokenizer``."""

from __future__ import annotations

import json
import shutil

import pytest

from dsm_engine.eval import cli
from dsm_engine.eval.benchmarks import BadRow, load_benchmark
from dsm_engine.models.hf_tokenizer import save_hf_tokenizer

GOOD_GSM8K = {"question": "1+1?", "answer": "one and one\n#### 2"}


@pytest.mark.parametrize(
    ("bench", "line", "names"),
    [
        ("gsm8k", {"question": "q"}, "field 'answer' is missing"),
        ("gsm8k", {"question": "q", "answer": 5}, "field 'answer' must be a non-empty str"),
        ("gsm8k", {"question": "q", "answer": "no marker"}, "field 'answer' has no '####"),
        ("gsm8k", [1, 2], "not a JSON object"),
        ("gsm8k", '{"question": "q",', "not JSON"),
        ("gaokao-mathqa", {"question": 5, "options": ["(A)1"], "label": "A"}, "field 'question'"),
        ("gaokao-mathqa", {"question": "q", "options": [], "label": "A"}, "field 'options'"),
        ("mgsm-zh", {"messages": [], "answer": "3"}, "field 'messages'"),
        ("mgsm-zh", {"messages": [{"role": "system"}], "answer": "3"}, "no user message"),
        ("math", {"problem": "p", "solution": "no box"}, "field 'solution' has no \\boxed{}"),
        ("cmath", {"question": "q", "golden": None}, "field 'golden'"),
    ],
)
def test_a_malformed_row_names_file_line_and_field(tmp_path, bench, line, names):
    from dsm_engine.eval.benchmarks import BENCHMARKS

    path = tmp_path / BENCHMARKS[bench].path
    path.parent.mkdir(parents=True)
    bad = line if isinstance(line, str) else json.dumps(line)
    first = json.dumps(GOOD_GSM8K) if bench == "gsm8k" else bad
    path.write_text(first + "\n" + bad + "\n")
    with pytest.raises(BadRow) as info:
        load_benchmark(bench, tmp_path)
    assert str(info.value).startswith(f"{path}:{1 if first is bad else 2}: bad {bench} row: ")
    assert names in str(info.value)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsm eval: error: "), captured.err
    return lines[0]


def test_a_malformed_benchmark_line_is_one_line_and_exit_2(tiny_hf_model, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    (data / "gsm8k" / "test.jsonl").write_text(
        json.dumps(GOOD_GSM8K) + "\n" + json.dumps({"answer": "#### 3"}) + "\n"
    )
    argv = ["--model", str(tiny_hf_model), "--out", str(tmp_path / "o"), "--data-dir", str(data)]
    assert cli.main([*argv, "--bench", "gsm8k"]) == 2
    line = _one_error_line(capsys)
    assert "gsm8k/test.jsonl:2:" in line and "field 'question' is missing" in line


def test_a_missing_model_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--bench", "gsm8k"]
    assert cli.main(argv) == 2
    assert f"--model {tmp_path / 'nope'}: no such file or folder" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.fixture
def model_without_tokenizer(tiny_hf_model, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_hf_model.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, bare / f.name)
    return bare


def test_a_model_without_tokenizer_asks_for_one_then_takes_it(
    model_without_tokenizer, tmp_path, shared_data, neox_tokenizer_path, capsys
):
    argv = ["--model", str(model_without_tokenizer), "--out", str(tmp_path / "o")]
    argv += ["--data-dir", str(shared_data / "benchmarks"), "--bench", "gsm8k", "--limit", "2"]
    argv += ["--max-new-tokens", "4"]
    assert cli.main(argv) == 2
    assert "pass --tokenizer" in _one_error_line(capsys)
    assert cli.main([*argv, "--tokenizer", str(neox_tokenizer_path)]) == 0
    records = [
        json.loads(x) for x in (tmp_path / "o" / "samples_gsm8k.jsonl").read_text().split("\n") if x
    ]
    assert len(records) == 2


def test_a_bare_tokenizer_json_becomes_one_transformers_loads(tmp_path, neox_tokenizer_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    save_hf_tokenizer(neox_tokenizer_path, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.eos_token == "<|endoftext|>" and loaded.unk_token is None
    text = "Natalia sold 48/2 = 24 clips in May."
    plain = Tokenizer.from_file(str(neox_tokenizer_path)).encode(text, add_special_tokens=False)
    assert loaded(text, add_special_tokens=False)["input_ids"] == plain.ids
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        save_hf_tokenizer(tmp_path / "missing", tmp_path / "t2")
