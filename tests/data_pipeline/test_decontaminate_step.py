"""The Decontaminator datatrove step, its removal log and `dsm data decontaminate`."""

from __future__ import annotations

import gzip
import json

import pytest
from datatrove.data import Document

from dsm_engine.data_pipeline.benchmark_texts import BenchmarkError, load_benchmark_texts
from dsm_engine.data_pipeline.decontaminate import Decontaminator, decontaminate_jsonl, main
from dsm_engine.data_pipeline.ngram_index import build_index


@pytest.fixture(scope="module")
def gsm8k_q(shared_data):
    lines = (shared_data / "benchmarks/gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines]
    return rows[0]["question"], rows[1]["answer"]


@pytest.fixture(scope="module")
def cmath_q(shared_data):
    first = (
        (shared_data / "benchmarks/cmath/test.jsonl").read_text(encoding="utf-8").splitlines()[0]
    )
    return json.loads(first)["question"]


@pytest.fixture(scope="module")
def small_benchmarks(tmp_path_factory, shared_data):
    """A benchmarks folder in the shared layout with the first 20 items of each file."""
    root = tmp_path_factory.mktemp("benchmarks")
    src = shared_data / "benchmarks"
    for f in (
        list(src.glob("*/test.jsonl"))
        + list(src.glob("agieval/*.jsonl"))
        + [src / "mgsm_zh/mgsm_zh.jsonl"]
    ):
        dest = root / f.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        dest.write_text("".join(lines[:20]), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def index(small_benchmarks):
    return build_index(load_benchmark_texts(small_benchmarks), "cpp")


def test_benchmark_loader_reads_every_eval_set_but_not_gsm8k_train(shared_data):
    texts = load_benchmark_texts(shared_data / "benchmarks")
    names = {t.benchmark for t in texts}
    assert names == {
        "gsm8k",
        "math",
        "math500",
        "cmath",
        "mgsm_zh",
        "agieval-gaokao-mathqa",
        "agieval-gaokao-mathcloze",
    }
    gsm = [t for t in texts if t.benchmark == "gsm8k"]
    assert {t.item for t in gsm} == set(range(1319))  # test split only
    assert {t.field for t in gsm} == {"question", "answer"}
    assert any("<<" not in t.text and t.field == "answer" for t in gsm)  # calculator marks cut
    math = [t for t in texts if t.benchmark == "math"]
    assert len(math) == 10_000  # 5,000 problems and their solutions


def test_benchmark_loader_errors_name_the_folder_and_line(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark_texts(tmp_path / "missing")
    with pytest.raises(BenchmarkError, match="no benchmark files"):
        load_benchmark_texts(tmp_path)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k/test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(BenchmarkError, match=r"test.jsonl:1"):
        load_benchmark_texts(tmp_path)


def test_step_removes_lines_logs_them_and_drops_emptied_documents(
    tmp_path, index, gsm8k_q, cmath_q
):
    question, answer = gsm8k_q
    docs = [
        Document(
            text=f"Intro to ducks.\n{question.upper()}\nOutro.",
            id="d0",
            metadata={"url": "http://a/0"},
        ),
        Document(text="Nothing to see here.\nJust text.", id="d1", metadata={"url": "http://a/1"}),
        Document(text=answer.replace("<<", "").replace(">>", " "), id="d2", metadata={}),
        Document(
            text=f"题目：\n{cmath_q.replace('，', ',')}\n谢谢",
            id="d3",
            metadata={"url": "http://a/3"},
        ),
    ]
    step = Decontaminator(removal_log=str(tmp_path / "removed"), index=index, batch_size=3)
    out = {d.id: d for d in step.run(iter(docs), rank=2)}

    assert set(out) == {"d0", "d1", "d3"}  # d2 was all benchmark answer
    assert out["d0"].text == "Intro to ducks.\nOutro."
    assert out["d0"].metadata["decontamination"] == {
        "segments_removed": 1,
        "chars_removed": len(question),
        "benchmarks": ["gsm8k"],
    }
    assert out["d1"].text == "Nothing to see here.\nJust text."
    assert "decontamination" not in out["d1"].metadata
    assert out["d3"].text == "题目：\n谢谢"

    log = [json.loads(x) for x in (tmp_path / "removed" / "00002.jsonl").read_text().splitlines()]
    by_id = {}
    for rec in log:
        by_id.setdefault(rec["id"], []).append(rec)
    assert by_id["d0"] == [
        {
            "id": "d0",
            "url": "http://a/0",
            "segment": 1,
            "text": question.upper(),
            "benchmarks": ["gsm8k"],
            "ngram": "janet s ducks lay 16 eggs per day she eats",
        }
    ]
    assert len(by_id["d2"]) == len(answer.split("\n")) and by_id["d2"][0]["url"] is None
    assert by_id["d3"][0]["benchmarks"] == ["cmath"] and by_id["d3"][0]["ngram"].count(" ") == 9

    stats = step.stats.to_dict()["stats"]
    assert stats["documents_in"] == 4
    assert stats["documents_contaminated"] == 3
    assert stats["documents_dropped_empty"] == 1
    assert stats["segments_removed"]["total"] == len(log)
    assert stats["segments_removed_gsm8k"] == 1 + len(by_id["d2"])


def _write_jsonl(path, records, gz=False):
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")


def test_cli_reads_datatrove_writer_output_and_writes_clean_documents(
    tmp_path, small_benchmarks, gsm8k_q
):
    question, _ = gsm8k_q
    src = tmp_path / "mined"
    src.mkdir()
    # the shape datatrove's JsonlWriter gives the mining stages: text, id, media, metadata
    _write_jsonl(
        src / "00000.jsonl.gz",
        [
            {
                "text": f"a\n{question}\nb",
                "id": "p0",
                "media": [],
                "metadata": {"url": "http://x/0"},
            },
            {"text": "clean page", "id": "p1", "media": [], "metadata": {"url": "http://x/1"}},
        ],
        gz=True,
    )
    _write_jsonl(src / "00001.jsonl", [{"text": question, "id": "p2", "metadata": {}}])
    (src / "notes.txt").write_text("not an input file")
    out = tmp_path / "out"
    assert (
        main(["--input", str(src), "--out", str(out), "--benchmarks", str(small_benchmarks)]) == 0
    )

    docs = []
    for f in sorted((out / "documents").glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs += [json.loads(x) for x in fh]
    assert {d["id"]: d["text"] for d in docs} == {"p0": "a\nb", "p1": "clean page"}
    assert next(d for d in docs if d["id"] == "p0")["metadata"]["url"] == "http://x/0"
    removed = [
        json.loads(x) for f in (out / "removed").glob("*.jsonl") for x in f.read_text().splitlines()
    ]
    assert sorted(r["id"] for r in removed) == ["p0", "p2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents_in"] == 3 and summary["documents_dropped_empty"] == 1


def test_cli_and_function_errors_name_the_input(tmp_path, small_benchmarks, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["--input", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl holds no records"):
        decontaminate_jsonl(empty, tmp_path / "o", small_benchmarks)
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        decontaminate_jsonl(tmp_path / "dir", tmp_path / "o", small_benchmarks)
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "x", "id": "1"}\n')
    with pytest.raises(FileNotFoundError, match="benchmarks folder"):
        decontaminate_jsonl(good, tmp_path / "o", tmp_path / "no-benchmarks")


def test_bad_line_fails_the_run_naming_it_unless_skipped(tmp_path, small_benchmarks, capsys):
    src = tmp_path / "corpus.jsonl"
    src.write_text(
        '{"text": "first page", "id": "a"}\n'
        '{"text": "cut off mid-rec\n'
        '{"id": "no text"}\n'
        '["not", "an", "object"]\n'
        '{"text": "last page", "id": "b"}\n'
    )
    out = tmp_path / "out"
    args = ["--input", str(src), "--out", str(out), "--benchmarks", str(small_benchmarks)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl:2: not valid JSON" in err and "--skip-bad-lines" in err
    assert not (out / "documents").exists()  # nothing written before the input was checked

    assert main([*args, "--skip-bad-lines"]) == 0
    assert "skipped 3 bad line(s)" in capsys.readouterr().err
    docs = [
        json.loads(x)
        for f in sorted((out / "documents").glob("*.jsonl.gz"))
        for x in gzip.decompress(f.read_bytes()).decode().splitlines()
    ]
    assert sorted(d["id"] for d in docs) == ["a", "b"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_lines"] == 3 and summary["documents_in"] == 2
    assert [x.split(": ")[0].rsplit("/", 1)[-1] for x in summary["bad_line_examples"]] == [
        "corpus.jsonl:2",
        "corpus.jsonl:3",
        "corpus.jsonl:4",
    ]
