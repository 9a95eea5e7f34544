"""Per-sample JSON Lines (append-only, resumable) and the summary table (Markdown + JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "PAPER_REFERENCE",
    "PAPER_TOOL_REFERENCE",
    "append_records",
    "read_records",
    "render_markdown",
    "write_summary",
]

# DeepSeekMath 7B results as printed in the paper (arXiv 2402.03300): Table 2 (base model,
# few-shot chain-of-thought) and Table 5 (instruct and RL models, chain-of-thought), in %.
# They are a reference column only: prompts, decoding and grading here are this project's.
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    "DeepSeekMath-Base 7B": {
        "gsm8k": 64.2,
        "math": 36.2,
        "cmath": 71.7,
        "gaokao-mathcloze": 20.3,
        "gaokao-mathqa": 35.3,
    },
    "DeepSeekMath-Instruct 7B": {"gsm8k": 82.9, "math": 46.8, "mgsm-zh": 73.2, "cmath": 84.6},
    "DeepSeekMath-RL 7B": {"gsm8k": 88.2, "math": 51.7, "mgsm-zh": 79.6, "cmath": 88.8},
}
# Table 3 (base model, few-shot program-of-thought: "GSM8K+Python", "MATH+Python") and
# Table 5 (tool-integrated reasoning), in %.
PAPER_TOOL_REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    "pot": {"DeepSeekMath-Base 7B": {"gsm8k": 66.9, "math": 31.4}},
    "tir": {
        "DeepSeekMath-Instruct 7B": {"gsm8k": 83.7, "math": 57.4, "mgsm-zh": 72.0, "cmath": 84.3},
        "DeepSeekMath-RL 7B": {"gsm8k": 86.7, "math": 58.8, "mgsm-zh": 78.4, "cmath": 87.6},
    },
}
_FORMAT_LABELS = {"cot": "CoT", "pot": "PoT", "tir": "TIR"}


def paper_reference(fmt: str = "cot") -> dict[str, dict[str, float]]:
    """The paper's numbers for solution format ``fmt`` (``cot``, ``pot`` or ``tir``)."""
    return PAPER_REFERENCE if fmt == "cot" else PAPER_TOOL_REFERENCE[fmt]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON Lines file; a torn last line (a killed writer) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if line_no == len(lines):
                break  # written halfway when the run was killed: redo that question
            raise ValueError(f"{path}:{line_no}: corrupt record") from None
    return records


def repair_tail(path: str | Path) -> None:
    """Drop a torn last line so that appended records start on a fresh line."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def append_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records (one JSON object per line) and flush them to disk."""
    with Path(path).open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


def render_markdown(results: dict[str, dict[str, float]], model: str, fmt: str = "cot") -> str:
    """Benchmarks as columns (like the paper's tables), metrics as rows, then the paper's
    rows for the same solution format ``fmt``."""
    benches = list(results)
    metrics: list[str] = []
    for bench_metrics in results.values():
        metrics += [m for m in bench_metrics if m != "n" and m not in metrics]
    header = "| model | metric | " + " | ".join(benches) + " |"
    lines = [header, "|" + "---|" * (len(benches) + 2)]
    for metric in metrics:
        cells = [f"{results[b][metric]:.1f}" if metric in results[b] else "-" for b in benches]
        lines.append(f"| {model} | {metric} | " + " | ".join(cells) + " |")
    lines.append(
        "| (questions) | n | " + " | ".join(str(results[b].get("n", 0)) for b in benches) + " |"
    )
    for name, numbers in paper_reference(fmt).items():
        if any(b in numbers for b in benches):
            cells = [f"{numbers[b]:.1f}" if b in numbers else "-" for b in benches]
            lines.append(f"| {name} (paper) | {_FORMAT_LABELS[fmt]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    out_dir: str | Path, results: dict[str, dict[str, float]], model: str, settings: dict[str, Any]
) -> None:
    """``summary.json`` (metrics, settings, paper reference) and ``summary.md`` in ``out_dir``."""
    out = Path(out_dir)
    fmt = settings.get("format", "cot")
    summary = {
        "model": model,
        "settings": settings,
        "results": results,
        "paper_reference": paper_reference(fmt),
    }
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "summary.md").write_text(render_markdown(results, model, fmt), encoding="utf-8")
