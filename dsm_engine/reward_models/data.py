"""Labelled reward-model examples (JSON Lines written by ``dsm rm label``) and their batches.

One row per sampled response::

    {"prompt_ids": [...], "response_ids": [...],          # token ids (no padding)
     "label": 1.0,                                          # ORM: final answer correct?
     "step_ends": [4, 9], "step_labels": [1.0, 0.0],        # PRM: response-relative step ends
     "prompt": "...", "response": "...", "gold": "..."}     # text, for people

``collate`` right-pads rows to a fixed length (the pipeline schedule needs one shape) and turns
labels into the positions the losses read: ORM scores the last response token, PRM each step end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from dsm_engine.jsonl import iter_jsonl

Kind = Literal["orm", "prm"]


@dataclass
class RMExample:
    prompt_ids: list[int]
    response_ids: list[int]
    label: float | None = None
    step_ends: list[int] | None = None
    step_labels: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_ids": self.prompt_ids, "response_ids": self.response_ids}
        if self.label is not None:
            out["label"] = self.label
        if self.step_ends is not None:
            out["step_ends"] = self.step_ends
            out["step_labels"] = self.step_labels
        return out


def parse_example(row: dict[str, Any], kind: Kind, where: str) -> RMExample:
    """Validate one JSON row for ``kind``; errors name ``where`` (file:line) and the field."""
    for name in ("prompt_ids", "response_ids"):
        if not isinstance(row.get(name), list) or not row[name]:
            raise ValueError(f"{where}: field '{name}' must be a non-empty list of token ids")
    ex = RMExample([int(t) for t in row["prompt_ids"]], [int(t) for t in row["response_ids"]])
    if kind == "orm":
        if "label" not in row:
            raise ValueError(f"{where}: ORM rows need a 'label' (1 correct / 0 incorrect)")
        ex.label = float(row["label"])
    else:
        ends, labels = row.get("step_ends"), row.get("step_labels")
        if not isinstance(ends, list) or not isinstance(labels, list) or len(ends) != len(labels):
            raise ValueError(
                f"{where}: PRM rows need 'step_ends' and 'step_labels' of equal length"
            )
        n = len(ex.response_ids)
        if any(not 0 <= int(e) < n for e in ends) or list(ends) != sorted(set(ends)):
            raise ValueError(f"{where}: 'step_ends' must rise within [0, {n})")
        ex.step_ends = [int(e) for e in ends]
        ex.step_labels = [float(v) for v in labels]
    return ex


def read_examples(path: str | Path, kind: Kind, field: str = "data.train_path") -> list[RMExample]:
    """All examples of a JSON Lines file; raises naming ``field``, the file and the line."""
    out = [parse_example(row, kind, f"{field}: {path}:{i}") for i, row in iter_jsonl(path, field)]
    if not out:
        raise ValueError(f"{field}: {path} holds no examples")
    return out


def write_examples(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def truncate(ex: RMExample, max_len: int) -> RMExample | None:
    """Fit ``prompt + response`` into ``max_len`` tokens: drop the prompt's start first, then
    the response's end (PRM steps past the cut are dropped; ORM rows must keep their end).
    Returns None when nothing labelled survives."""
    p, r = ex.prompt_ids, ex.response_ids
    if len(p) + len(r) <= max_len:
        return ex
    keep_p = max(1, max_len - len(r))
    p = p[-keep_p:]
    room = max_len - len(p)
    if room < len(r):
        if ex.step_ends is None:
            return None
        r = r[:room]
        pairs = [(e, y) for e, y in zip(ex.step_ends, ex.step_labels or []) if e < room]
        if not pairs:
            return None
        return RMExample(p, r, None, [e for e, _ in pairs], [y for _, y in pairs])
    return RMExample(p, r, ex.label, ex.step_ends, ex.step_labels)


def collate(
    examples: Sequence[RMExample], kind: Kind, seq_len: int, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a microbatch.

    tokens: ``(b, seq_len)`` int64; positions: ``(b, S)`` int64 row positions to score
    (ORM: S = 1, the last response token; PRM: step ends); labels ``(b, S)`` fp32; mask
    ``(b, S)`` bool.
    """
    b = len(examples)
    tokens = torch.full((b, seq_len), pad_id, dtype=torch.long)
    s = 1 if kind == "orm" else max(1, max(len(e.step_ends or []) for e in examples))
    positions = torch.zeros((b, s), dtype=torch.long)
    labels = torch.zeros((b, s), dtype=torch.float32)
    mask = torch.zeros((b, s), dtype=torch.bool)
    for i, ex in enumerate(examples):
        row = ex.prompt_ids + ex.response_ids
        if len(row) > seq_len:
            raise ValueError(
                f"example {i} has {len(row)} tokens > seq_len {seq_len}; truncate first"
            )
        tokens[i, : len(row)] = torch.tensor(row)
        lp = len(ex.prompt_ids)
        if kind == "orm":
            positions[i, 0] = len(row) - 1
            labels[i, 0] = float(ex.label)
            mask[i, 0] = True
        else:
            for j, (e, y) in enumerate(zip(ex.step_ends or [], ex.step_labels or [])):
                positions[i, j] = lp + e
                labels[i, j] = y
                mask[i, j] = True
    return {"tokens": tokens, "positions": positions, "labels": labels, "mask": mask}


def count_labels(examples: Sequence[RMExample], kind: Kind) -> int:
    """Labelled positions of a batch (the loss's normaliser)."""
    if kind == "orm":
        return len(examples)
    return sum(len(e.step_ends or []) for e in examples)
