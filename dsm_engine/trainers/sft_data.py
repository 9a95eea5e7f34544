"""SFT data: JSON Lines of prompt/response pairs or chat messages, tokenised and packed.

Accepted rows (one JSON object per line)::

    {"prompt": "...", "response": "..."}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

Chat rows are rendered in DeepSeek's plain chat format: ``"{system}\\n\\n"`` (optional), then per
turn ``"User: {user}\\n\\nAssistant: "`` and ``"{assistant}<eos>"``. Loss is taken only on
response / assistant tokens (and their end-of-sequence token).

Responses may be tool-integrated (``dsm_engine.sandbox.tir_format``): Python blocks each
followed by an ``` ```output`` block. The interpreter wrote those outputs, so their tokens are
masked from the loss; the model still learns its code and the ``` ```output`` fence that asks
for a run. Each model / output span is tokenised on its own, so the mask is exact.

Packing puts several documents in one row of ``seq_length`` tokens. Each row carries
``position_ids`` restarting at 0 for every document and ``doc_ids`` (1, 2, ... per document,
0 for padding), which the model turns into a block-diagonal causal mask, so no token attends
across documents (see ``dsm_engine.models.attention``). Without packing each document gets its
own padded row; both give the same per-token loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm_engine.config import ConfigError
from dsm_engine.jsonl import iter_jsonl
from dsm_engine.sandbox.tir_format import split_tool_outputs
from dsm_engine.text_codec import END_TOKENS


@dataclass
class SFTDataConfig:
    """SFT data: a JSONL file, the ``tokenizer.json`` to encode it, and packing."""

    path: str = ""
    tokenizer: str = ""
    eos_token: str | None = None  # default: the tokenizer's <|endoftext|> / </s> / <eos>
    pack: bool = True
    seed: int = 1234


@dataclass
class Example:
    """One tokenised document: ``ids`` and a same-length 0/1 ``target`` (1 = learn this token)."""

    ids: list[int]
    target: list[int]


def load_tokenizer(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (error names the field if missing)."""
    from tokenizers import Tokenizer

    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"data.tokenizer: {path!r} is not a tokenizer.json file")
    return Tokenizer.from_file(str(path))


def eos_id(tokenizer: Any, name: str | None) -> int:
    """Id of the end-of-sequence token ``name`` (or the first known EOS spelling)."""
    for cand in (name,) if name else END_TOKENS:
        tid = tokenizer.token_to_id(cand)
        if tid is not None:
            return tid
    raise ConfigError(f"data.eos_token: {name or END_TOKENS} not in the tokenizer vocabulary")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def _encode_response(tokenizer: Any, text: str, eos: int) -> tuple[list[int], list[int]]:
    """Tokens of a response plus EOS, and targets: 1, except 0 on interpreter outputs."""
    ids: list[int] = []
    target: list[int] = []
    for span in split_tool_outputs(text):
        seg = _encode(tokenizer, span.text)
        ids += seg
        target += [int(span.source == "model")] * len(seg)
    return ids + [eos], target + [1]


def tokenize_row(row: dict[str, Any], tokenizer: Any, eos: int, where: str) -> Example:
    """Tokenise one JSONL row into an :class:`Example`; ``where`` names it in errors."""
    if "prompt" in row and "response" in row:
        p, r = row["prompt"], row["response"]
        if not isinstance(p, str) or not isinstance(r, str):
            raise ValueError(f"{where}: 'prompt' and 'response' must be strings")
        pid = _encode(tokenizer, p)
        rid, rtarget = _encode_response(tokenizer, r, eos)
        return Example(ids=pid + rid, target=[0] * len(pid) + rtarget)
    if "messages" in row:
        ids: list[int] = []
        target: list[int] = []
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        for j, m in enumerate(msgs):
            role, content = m.get("role"), m.get("content")
            if not isinstance(content, str):
                raise ValueError(f"{where}: messages[{j}].content must be a string")
            if role == "system":
                seg = _encode(tokenizer, content + "\n\n")
                learn = [0] * len(seg)
            elif role == "user":
                seg = _encode(tokenizer, f"User: {content}\n\nAssistant: ")
                learn = [0] * len(seg)
            elif role == "assistant":
                seg, learn = _encode_response(tokenizer, content, eos)
            else:
                raise ValueError(
                    f"{where}: messages[{j}].role {role!r} is not system/user/assistant"
                )
            ids += seg
            target += learn
        if not any(target):
            raise ValueError(f"{where}: no assistant message to learn from")
        return Example(ids=ids, target=target)
    raise ValueError(f"{where}: expected keys 'prompt'+'response' or 'messages', got {sorted(row)}")


def load_examples(cfg: SFTDataConfig, tokenizer: Any) -> list[Example]:
    """Read and tokenise every row of ``cfg.path``; errors name the file and line."""
    path = Path(cfg.path)
    if not cfg.path or not path.is_file():
        raise FileNotFoundError(f"data.path: {cfg.path!r} does not exist")
    eos = eos_id(tokenizer, cfg.eos_token)
    out = [
        tokenize_row(row, tokenizer, eos, f"{path}:{n}") for n, row in iter_jsonl(path, "data.path")
    ]
    if not out:
        raise ValueError(f"data.path: {path} holds no examples (empty dataset)")
    return out


def make_rows(
    examples: list[Example], seq_length: int, pack: bool
) -> list[dict[str, torch.Tensor]]:
    """Turn documents into training rows of ``seq_length`` (inputs/labels shifted by one).

    A document of ``n`` tokens yields ``n - 1`` (input, label) positions, truncated to
    ``seq_length``. Packing is first-fit in the given order. Each row holds int64 ``tokens``,
    ``labels``, ``position_ids``, ``doc_ids`` and float ``loss_mask``, all of length seq_length.
    """
    docs = []
    for ex in examples:
        n = min(len(ex.ids) - 1, seq_length)
        if n <= 0 or not any(ex.target[1 : n + 1]):
            continue  # nothing to learn (too short, or the response was truncated away)
        docs.append((ex.ids[:n], ex.ids[1 : n + 1], ex.target[1 : n + 1]))
    if not docs:
        raise ValueError("data: no example has a response token within the sequence length")
    bins: list[list[int]] = []
    used: list[int] = []
    for i, (tok, _, _) in enumerate(docs):
        for b in range(len(bins)) if pack else ():
            if used[b] + len(tok) <= seq_length:
                bins[b].append(i)
                used[b] += len(tok)
                break
        else:
            bins.append([i])
            used.append(len(tok))
    rows = []
    for members in bins:
        row = {k: torch.zeros(seq_length, dtype=torch.long) for k in ("tokens", "labels")}
        row["position_ids"] = torch.arange(seq_length, dtype=torch.long)
        row["doc_ids"] = torch.zeros(seq_length, dtype=torch.long)
        row["loss_mask"] = torch.zeros(seq_length, dtype=torch.float32)
        at = 0
        for d, i in enumerate(members, 1):
            tok, lab, tgt = docs[i]
            n = len(tok)
            row["tokens"][at : at + n] = torch.tensor(tok)
            row["labels"][at : at + n] = torch.tensor(lab)
            row["loss_mask"][at : at + n] = torch.tensor(tgt, dtype=torch.float32)
            row["position_ids"][at : at + n] = torch.arange(n)
            row["doc_ids"][at : at + n] = d
            at += n
        rows.append(row)
    return rows


class SFTDataset:
    """Rows of an SFT file, indexable by any sample number: sample ``i`` is row
    ``perm_e[i % N]`` of epoch ``e = i // N``, with ``perm_e`` a permutation seeded by
    ``seed + e``, so the order is fixed and needs no state to resume."""

    def __init__(self, rows: list[dict[str, torch.Tensor]], seed: int) -> None:
        self.rows = rows
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        epoch, j = divmod(int(i), len(self.rows))
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng(self.seed + epoch).permutation(
                len(self.rows)
            )
        return self.rows[int(self._perms[epoch][j])]

    def num_loss_tokens(self) -> int:
        return int(sum(r["loss_mask"].sum() for r in self.rows))


def build_sft_dataset(cfg: SFTDataConfig, seq_length: int) -> SFTDataset:
    """Load, tokenise and (optionally) pack ``cfg.path`` into an :class:`SFTDataset`."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    rows = make_rows(load_examples(cfg, tokenizer), seq_length, cfg.pack)
    return SFTDataset(rows, cfg.seed)
