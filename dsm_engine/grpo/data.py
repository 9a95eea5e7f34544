"""GRPO prompts: JSON Lines questions with gold answers, in a seeded order with no iterator state.

The order is a fresh permutation of the rows per epoch, drawn from ``seed + epoch``; the data
position is just the number of prompts consumed so far, so a checkpoint stores one integer and
``batch(position, k)`` returns the same prompts on every rank and after every resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsm_engine.config import ConfigError
from dsm_engine.grpo.config import PromptDataConfig
from dsm_engine.jsonl import iter_jsonl
from dsm_engine.text_codec import TextCodec


@dataclass
class Prompt:
    """One question: its text, gold answer and prompt token ids (template applied);
    ``solution``: its gold worked solution (read for ``algorithm.name: sft`` only)."""

    text: str
    gold: str
    token_ids: list[int]
    solution: str | None = None


def read_jsonl(path: str | Path, fields: tuple[str, ...], where: str) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file that must hold ``fields``; errors name ``where`` and the line."""
    rows = []
    for i, row in iter_jsonl(path, where):
        for name in fields:
            if name not in row:
                raise ValueError(f"{where}: {path}:{i} has no field '{name}'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{where}: {path} holds no rows")
    return rows


class PromptDataset:
    """Questions of ``cfg.path`` rendered with ``cfg.template`` and tokenised by ``codec``;
    with ``solutions`` every row must hold ``cfg.solution_field`` too (ValueError naming the
    field, the file and the line)."""

    def __init__(
        self,
        cfg: PromptDataConfig,
        codec: TextCodec,
        *,
        path: str | None = None,
        solutions: bool = False,
    ):
        self.cfg = cfg
        self.codec = codec
        where = "data.path" if path is None else "eval.path"
        fields = (cfg.question_field, cfg.answer_field)
        if solutions:  # the error says who needs the field
            where += " (algorithm.name=sft trains on data.solution_field)"
            fields += (cfg.solution_field,)
        rows = read_jsonl(path or cfg.path, fields, where)
        if "{question}" not in cfg.template:
            raise ConfigError(f"data.template must contain '{{question}}': {cfg.template!r}")
        self._orders: dict[int, list[int]] = {}
        self.prompts: list[Prompt] = []
        for row in rows:
            text = cfg.template.format(question=row[cfg.question_field])
            ids = codec.encode(text)
            if cfg.add_bos and codec.bos_id is not None:
                ids = [codec.bos_id, *ids]
            ids = ids[-cfg.max_prompt_tokens :]  # keep the end: the question's last words
            solution = str(row[cfg.solution_field]) if solutions else None
            self.prompts.append(Prompt(text, str(row[cfg.answer_field]), ids, solution))

    def __len__(self) -> int:
        return len(self.prompts)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.cfg.seed + epoch)
            self._orders = {epoch: torch.randperm(len(self.prompts), generator=g).tolist()}
        return self._orders[epoch]

    def batch(self, position: int, k: int) -> list[Prompt]:
        """The ``k`` prompts that follow the first ``position`` of the seeded stream."""
        out = []
        n = len(self.prompts)
        for p in range(position, position + k):
            out.append(self.prompts[self._order(p // n)[p % n]])
        return out
