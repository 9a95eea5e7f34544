"""The one JSON Lines reader: plain and gzip files, blank lines skipped, errors that name the
config field, the file and the line."""

from __future__ import annotations

import gzip
import json

import pytest

from dsm_engine.jsonl import iter_jsonl


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
