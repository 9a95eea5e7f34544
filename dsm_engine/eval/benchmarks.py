"""Loaders for the DeepSeekMath evaluation sets (JSON Lines, as shipped in shared/data).

Each benchmark becomes a list of ``Example`` with the question text, the gold answer in the
form the verifier grades (``dsm_engine.rewards.grade_batch``), the answer kind and language.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm_engine.rewards.extract import extract_gsm8k_gold, find_last_boxed

__all__ = [
    "BENCHMARKS",
    "BadRow",
    "BenchmarkSpec",
    "Example",
    "default_data_dir",
    "load_benchmark",
]


@dataclass
class Example:
    """One benchmark question.

    gold: reference answer for the verifier (bare answer; ``;``-separated blanks for cloze;
        option letters for multiple choice).
    kind: verifier answer kind (``gsm8k``, ``math``, ``number``, ``choice``, ``cloze``).
    choices: option texts of a multiple-choice question (``"(A)..."``), else None.
    """

    id: str
    question: str
    gold: str
    kind: str
    lang: str
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives (relative to the data dir) and how to read one row."""

    name: str
    path: str
    kind: str
    lang: str
    row: Callable[[dict[str, Any], int], Example]


def default_data_dir() -> Path:
    """``$DSM_BENCHMARKS_DIR``, else ``<checkout>/../shared/data/benchmarks``."""
    env = os.environ.get("DSM_BENCHMARKS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"


class BadRow(ValueError):
    """One benchmark row lacks a field or holds a wrong value (the message names the field)."""


def _field(row: dict[str, Any], name: str, kinds: tuple[type, ...] = (str,)) -> Any:
    """``row[name]``, which must be present, non-empty and of one of ``kinds``."""
    if name not in row:
        raise BadRow(f"field '{name}' is missing")
    value = row[name]
    if not isinstance(value, kinds) or isinstance(value, bool) or value in ("", [], {}):
        want = " or ".join(k.__name__ for k in kinds)
        raise BadRow(f"field '{name}' must be a non-empty {want}, got {value!r:.60}")
    return value


def _gsm8k(row: dict[str, Any], i: int) -> Example:
    answer = _field(row, "answer")
    if "####" not in answer:
        raise BadRow("field 'answer' has no '#### <number>' line")
    return Example(str(i), _field(row, "question"), extract_gsm8k_gold(answer), "gsm8k", "en")


def _math(row: dict[str, Any], i: int) -> Example:
    if row.get("answer") is not None:
        gold = str(_field(row, "answer", (str, int, float)))
    else:
        gold = find_last_boxed(_field(row, "solution"))
        if gold is None:
            raise BadRow("field 'solution' has no \\boxed{} answer and there is no 'answer' field")
    meta = {k: row[k] for k in ("level", "type", "subject") if k in row}
    ident = str(row.get("unique_id", row.get("idx", i)))
    return Example(ident, _field(row, "problem"), gold, "math", "en", meta=meta)


def _cmath(row: dict[str, Any], i: int) -> Example:
    meta = {k: row[k] for k in ("grade", "reasoning_step") if k in row}
    gold = str(_field(row, "golden", (str, int, float)))
    return Example(str(i), _field(row, "question"), gold, "number", "zh", meta=meta)


def _gaokao_qa(row: dict[str, Any], i: int) -> Example:
    options = _field(row, "options", (list,))
    question, label = _field(row, "question").strip(), _field(row, "label")
    return Example(str(i), question, label, "choice", "zh", choices=list(options))


def _gaokao_cloze(row: dict[str, Any], i: int) -> Example:
    question = _field(row, "question").strip()
    return Example(str(i), question, _field(row, "answer"), "cloze", "zh")


def _mgsm(row: dict[str, Any], i: int) -> Example:
    messages = _field(row, "messages", (list,))
    user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not user or not isinstance(user[0], str):
        raise BadRow("field 'messages' has no user message with a 'content' string")
    answer = str(_field(row, "answer", (str, int, float))).replace(",", "")
    return Example(str(row.get("id", i)), user[0], answer, "number", "zh")


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec("gsm8k", "gsm8k/test.jsonl", "gsm8k", "en", _gsm8k),
        BenchmarkSpec("math", "math/test.jsonl", "math", "en", _math),
        BenchmarkSpec("math500", "math500/test.jsonl", "math", "en", _math),
        BenchmarkSpec("cmath", "cmath/test.jsonl", "number", "zh", _cmath),
        BenchmarkSpec("gaokao-mathqa", "agieval/gaokao-mathqa.jsonl", "choice", "zh", _gaokao_qa),
        BenchmarkSpec(
            "gaokao-mathcloze", "agieval/gaokao-mathcloze.jsonl", "cloze", "zh", _gaokao_cloze
        ),
        BenchmarkSpec("mgsm-zh", "mgsm_zh/mgsm_zh.jsonl", "number", "zh", _mgsm),
    ]
}


def load_benchmark(
    name: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[Example]:
    """Read benchmark ``name`` (a key of ``BENCHMARKS``) from ``data_dir``; first ``limit`` rows."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    path = path / spec.path
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name!r}: {path} not found (set --data-dir)")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRow(f"{path}:{line_no}: bad {name} row: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise BadRow(f"{path}:{line_no}: bad {name} row: not a JSON object")
            try:
                examples.append(spec.row(row, len(examples)))
            except BadRow as e:
                raise BadRow(f"{path}:{line_no}: bad {name} row: {e}") from None
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):  # resume keys on ids: make them unique by position
        for i, example in enumerate(examples):
            example.id = str(i)
    return examples
