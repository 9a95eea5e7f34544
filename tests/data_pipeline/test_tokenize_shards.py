"""Tokenisation into megatron-core indexed datasets (`dsm data tokenize`)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from dsm_engine.data_pipeline.tokenize import load_tokenizer, main, tokenize_jsonl

TEXTS = [
    "Janet’s ducks lay 16 eggs per day.\nShe eats three for breakfast.",
    "妈咪买了3盒茶叶，一盒茶叶有6小包，一共买了多少小包茶叶？",
    "The denominator factors into $x^2+x-6=(x-2)(x+3)$, so $\\frac{2}{x^2+x-6}$ has $\\boxed{2}$.",
    "  leading and trailing spaces, tabs\tand emoji 🙂  ",
]


def _write(path, records, gz=False):
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")


def _load(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(str(prefix))


def test_shards_load_through_indexed_dataset_and_decode_back(tmp_path, neox_tokenizer_path):
    src = tmp_path / "docs.jsonl"
    _write(
        src, [{"text": t, "id": str(i)} for i, t in enumerate(TEXTS)] + [{"text": "", "id": "e"}]
    )
    stats = tokenize_jsonl(src, neox_tokenizer_path, tmp_path / "out" / "shard", progress=False)

    tok = load_tokenizer(neox_tokenizer_path)
    eod = tok.token_to_id("<|endoftext|>")
    assert (stats.documents, stats.skipped_empty, stats.eod_id, stats.dtype) == (
        4,
        1,
        eod,
        "uint16",
    )
    ds = _load(tmp_path / "out" / "shard")
    assert len(ds) == 4 and list(ds.document_indices) == [0, 1, 2, 3, 4]
    assert ds[0].dtype == np.uint16
    total = 0
    for i, text in enumerate(TEXTS):
        ids = ds[i]
        assert ids[-1] == eod and eod not in ids[:-1]
        assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == text
        total += len(ids)
    assert stats.tokens == total == int(ds.sequence_lengths.sum())


def test_gz_files_folders_and_no_eod(tmp_path, neox_tokenizer_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    _write(folder / "a.jsonl.gz", [{"text": TEXTS[0]}], gz=True)
    _write(folder / "sub" / "b.jsonl", [{"text": TEXTS[1]}, {"text": TEXTS[2]}])
    (folder / "README.txt").write_text("not input")
    extra = tmp_path / "c.jsonl"
    _write(extra, [{"body": TEXTS[3]}])
    stats = tokenize_jsonl(
        [folder], neox_tokenizer_path, tmp_path / "s", append_eod=False, progress=False
    )
    tok = load_tokenizer(neox_tokenizer_path)
    ds = _load(tmp_path / "s")
    assert [tok.decode(ds[i].tolist()) for i in range(len(ds))] == TEXTS[:3]
    assert stats.eod_id is None and stats.tokens == int(ds.sequence_lengths.sum())
    stats = tokenize_jsonl(
        extra, neox_tokenizer_path, tmp_path / "t", text_key="body", progress=False
    )
    assert stats.documents == 1


def test_reads_decontamination_output_documents_only(tmp_path, neox_tokenizer_path):
    out = tmp_path / "decont"
    (out / "documents").mkdir(parents=True)
    (out / "removed").mkdir()
    _write(out / "documents" / "00000.jsonl.gz", [{"text": "kept text", "id": "1"}], gz=True)
    _write(out / "removed" / "00000.jsonl", [{"text": "removed benchmark line", "id": "1"}])
    (out / "summary.json").write_text("{}")
    stats = tokenize_jsonl(out, neox_tokenizer_path, tmp_path / "s", progress=False)
    assert stats.documents == 1 and stats.files == [str(out / "documents" / "00000.jsonl.gz")]


def test_bad_input_errors_name_the_file(tmp_path, neox_tokenizer_path, capsys):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        tokenize_jsonl(missing, neox_tokenizer_path, tmp_path / "s", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl hold no records"):
        tokenize_jsonl(empty, neox_tokenizer_path, tmp_path / "s", progress=False)
    blank = tmp_path / "blank.jsonl"
    _write(blank, [{"text": ""}])
    with pytest.raises(ValueError, match="no non-empty texts"):
        tokenize_jsonl(blank, neox_tokenizer_path, tmp_path / "s", progress=False)
    assert not (tmp_path / "s.bin").exists()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        tokenize_jsonl(broken, neox_tokenizer_path, tmp_path / "s", progress=False)
    nokey = tmp_path / "nokey.jsonl"
    _write(nokey, [{"content": "x"}])
    with pytest.raises(ValueError, match=r"nokey.jsonl:1: record has no 'text' field"):
        tokenize_jsonl(nokey, neox_tokenizer_path, tmp_path / "s", progress=False)
    good = tmp_path / "good.jsonl"
    _write(good, [{"text": "x"}])
    with pytest.raises(FileNotFoundError, match="no-tokenizer.json"):
        tokenize_jsonl(good, tmp_path / "no-tokenizer.json", tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="end-of-document"):
        tokenize_jsonl(
            good, neox_tokenizer_path, tmp_path / "s", eod_token="<nope>", progress=False
        )
    assert (
        main(
            [
                "--input",
                str(missing),
                "--tokenizer",
                str(neox_tokenizer_path),
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "missing.jsonl" in capsys.readouterr().err


def test_cli_writes_bin_and_idx(tmp_path, neox_tokenizer_path, capsys):
    src = tmp_path / "docs.jsonl"
    _write(src, [{"text": t} for t in TEXTS])
    argv = [
        "--input",
        str(src),
        "--tokenizer",
        str(neox_tokenizer_path),
        "--out",
        str(tmp_path / "cli"),
    ]
    assert main(argv + ["--append-eod", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 4 and report["eod_id"] is not None
    assert (tmp_path / "cli.bin").stat().st_size == 2 * report["tokens"]
    assert len(_load(tmp_path / "cli")) == 4


def test_bad_line_leaves_no_output_unless_skipped(tmp_path, neox_tokenizer_path, capsys):
    src = tmp_path / "docs.jsonl"
    lines = (
        [json.dumps({"text": t}) for t in TEXTS[:2]]
        + ['{"text": 3}']
        + [json.dumps({"text": TEXTS[2]})]
    )
    src.write_text("\n".join(lines) + "\n")
    args = [
        "--input",
        str(src),
        "--tokenizer",
        str(neox_tokenizer_path),
        "--out",
        str(tmp_path / "s"),
        "--no-progress",
    ]
    assert main(args) == 2
    assert "docs.jsonl:3: field 'text' is not a string" in capsys.readouterr().err
    assert not list(tmp_path.glob("s.*"))  # the first two documents were not left behind
    assert main([*args, "--skip-bad-lines"]) == 0
    out = capsys.readouterr()
    assert "skipped 1 bad line(s)" in out.err and "docs.jsonl:3" in out.err
    stats = json.loads(out.out)
    assert (stats["documents"], stats["bad_lines"]) == (3, 1)
    assert len(_load(tmp_path / "s")) == 3
