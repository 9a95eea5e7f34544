"""The evaluation benchmarks' texts: what decontamination must keep out of the corpus.

Reads the evaluation splits under a benchmarks folder laid out like ``shared/data/benchmarks``
(GSM8K *train* is a training split and is deliberately not read). Each benchmark item yields
its question and its answer text:

=========================  ==========================================  =====================
benchmark                  question text                               answer text
=========================  ==========================================  =====================
gsm8k (test)               ``question``                                ``answer`` as stored,
                                                                       and again without the
                                                                       ``<<a*b=c>>``
                                                                       calculator marks
math (test), math500       ``problem``                                 ``solution``
cmath (test)               ``question`` + final answer ``golden``      —
mgsm_zh                    user message + final answer ``answer``      —
agieval/<name>             ``question`` + ``options`` + ``answer``     —
=========================  ==========================================  =====================

Benchmarks whose answer is a bare value (``18``, ``$\\frac{1}{2}$``) have it appended to the
question rather than kept as its own text: on its own it would fall under the 3-to-9-word
exact rule and remove every line that mentions ``\\frac{1}{2}``. MATH-500's ``answer`` field is
left out for the same reason (its solution holds it in ``\\boxed{}`` already).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchmarkText:
    """One text of one benchmark item."""

    benchmark: str  # e.g. "gsm8k", "agieval-gaokao-mathqa"
    item: int  # 0-based line number in the benchmark's file
    field: str  # "question" or "answer"
    text: str


class BenchmarkError(ValueError):
    """A benchmark folder or file is missing or malformed."""


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _join(*parts: object) -> str:
    return "\n".join(str(p) for p in parts if p not in (None, "", []))


def _gsm8k(row: dict) -> Iterator[tuple[str, str]]:
    yield "question", row["question"]
    yield "answer", row["answer"]
    plain = _CALCULATOR.sub("", row["answer"])
    if plain != row["answer"]:
        yield "answer", plain


def _math(row: dict) -> Iterator[tuple[str, str]]:
    yield "question", row["problem"]
    yield "answer", row["solution"]


def _cmath(row: dict) -> Iterator[tuple[str, str]]:
    yield "question", _join(row["question"], row.get("golden"))


def _mgsm(row: dict) -> Iterator[tuple[str, str]]:
    user = [m["content"] for m in row["messages"] if m.get("role") == "user"]
    if not user:
        raise KeyError("messages[role=user]")
    yield "question", _join(user[0], row.get("answer"))


def _agieval(row: dict) -> Iterator[tuple[str, str]]:
    options = row.get("options") or []
    yield "question", _join(row.get("passage"), row["question"], *options, row.get("answer"))


# relative path (or glob) -> (benchmark name, row -> texts)
_REGISTRY: list[tuple[str, str | None, Callable[[dict], Iterator[tuple[str, str]]]]] = [
    ("gsm8k/test.jsonl", "gsm8k", _gsm8k),
    ("math/test.jsonl", "math", _math),
    ("math500/test.jsonl", "math500", _math),
    ("cmath/test.jsonl", "cmath", _cmath),
    ("mgsm_zh/mgsm_zh.jsonl", "mgsm_zh", _mgsm),
    ("agieval/*.jsonl", None, _agieval),  # name: "agieval-" + file stem
]


def benchmark_files(root: str | Path) -> list[tuple[str, Path, Callable]]:
    """``(benchmark name, file, row reader)`` for each evaluation file found under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"benchmarks folder {root} does not exist")
    found = []
    for pattern, name, reader in _REGISTRY:
        for path in sorted(root.glob(pattern)):
            found.append((name or f"agieval-{path.stem}", path, reader))
    if not found:
        known = ", ".join(p for p, _, _ in _REGISTRY)
        raise BenchmarkError(f"no benchmark files under {root} (looked for {known})")
    return found


def load_benchmark_texts(root: str | Path) -> list[BenchmarkText]:
    """Every question and answer text of every evaluation benchmark under ``root``."""
    texts: list[BenchmarkText] = []
    for name, path, reader in benchmark_files(root):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    pairs = list(reader(row))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise BenchmarkError(
                        f"{path}:{i + 1}: cannot read benchmark item: {e!r}"
                    ) from e
                texts.extend(BenchmarkText(name, i, field, text) for field, text in pairs if text)
    return texts
