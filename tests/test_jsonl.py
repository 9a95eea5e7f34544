"""The one JSON Lines reader: plain and gzip files, blank lines skipped, errors that name the
config field, the file and the line."""

from __future__ import annotations

import gzip
import json

import pytest

from dsm_engine.jsonl import BadLines, iter_jsonl


def test_reads_plain_and_gzip_files_with_line_numbers(tmp_path):
    rows = [{"a": 1}, {"b": [2, 3]}]
    text = json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n"
    plain = tmp_path / "x.jsonl"
    plain.write_text(text)
    packed = tmp_path / "x.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(text)
    for path in (plain, packed):
        assert list(iter_jsonl(path)) == [(1, rows[0]), (3, rows[1])]


def test_malformed_line_names_field_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"ok": 1}\n{"oops": \n')
    with pytest.raises(ValueError, match=r"^data\.path: .*broken\.jsonl:2: not valid JSON"):
        list(iter_jsonl(path, "data.path"))


def test_missing_file_names_field(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^reward\.path: .*nope\.jsonl does not exist"):
        next(iter_jsonl(tmp_path / "nope.jsonl", "reward.path"))


def _bad_file(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n\xff\xfe{"a": 3}\n{"a": 4}\n')
    return path


def test_bad_line_fails_by_default_naming_it_and_the_hint(tmp_path):
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: not valid JSON .*\(use skip\)$"):
        list(iter_jsonl(_bad_file(tmp_path), bad=BadLines(hint="use skip")))


def test_skipped_bad_lines_are_counted_and_named(tmp_path):
    bad = BadLines(skip=True)
    rows = list(iter_jsonl(_bad_file(tmp_path), bad=bad))
    assert rows == [(1, {"a": 1}), (4, {"a": 4})]
    assert bad.count == 2
    assert [n.split(": ", 1)[0].rsplit("/", 1)[-1] for n in bad.named] == [
        "mixed.jsonl:2",
        "mixed.jsonl:3",
    ]
    assert "not UTF-8" in bad.named[1]
    assert bad.summary().startswith("skipped 2 bad line(s): ")


def test_gzip_file_cut_off_is_a_bad_line_after_the_last_whole_one(tmp_path):
    packed = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz:\d+: compressed file cut off"):
        list(iter_jsonl(path))
    bad = BadLines(skip=True)
    rows = list(iter_jsonl(path, bad=bad))
    assert bad.count == 1 and rows and [n for n, _ in rows] == list(range(1, len(rows) + 1))
