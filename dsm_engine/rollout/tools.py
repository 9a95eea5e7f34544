"""Tool-integrated rollouts: sampling that runs the model's Python blocks between rounds.

The multi-round loop is the sandbox's :func:`~dsm_engine.sandbox.tool_loop.run_tool_loop`;
this module feeds it from a backend's token-level sampler. Each sample keeps its own token
ids: the sampled tokens (with their log-probs) of every round, and between rounds the
tokenised interpreter output, flagged in ``RolloutBatch.tool_mask`` so the policy loss skips
it (the model never chose those tokens). The next round continues from exactly those ids,
so the policy is trained on the same sequence the sampler conditioned on.

A response's token budget (``SamplingParams.max_new_tokens``) counts the tool's tokens too:
an output that does not fit is cut and the sample ends unfinished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dsm_engine.rollout.base import RolloutBatch, SamplingParams, ToolUse
from dsm_engine.sandbox import Sandbox
from dsm_engine.sandbox.tool_loop import Continuation, ToolLoopConfig, run_tool_loop

__all__ = ["ContinueRows", "Piece", "ToolOptions", "stop_end", "tool_rollout"]


@dataclass(frozen=True)
class ToolOptions:
    """What a backend needs to run tool-integrated rollouts.

    sandbox: runs the programs (owned by the caller, who closes it).
    loop: rounds, output length, replay (``ToolLoopConfig``).
    encode / decode: the policy's tokenizer (no special tokens added; special ones skipped).
    tokenizer_json: the same tokenizer as ``tokenizers`` JSON (``Tokenizer.to_str()``), for a
        backend that matches stop strings on its own side (vllm); None where none does.
    """

    sandbox: Sandbox
    loop: ToolLoopConfig
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    tokenizer_json: str | None = None


@dataclass
class Piece:
    """One round of one sample: sampled ids, their log-probs, and whether a stop token ended
    it (a stop *string* ends a round but not the response)."""

    token_ids: list[int]
    logprobs: list[float]
    hit_stop_token: bool


class ContinueRows(Protocol):
    """A backend's sampler for the tool loop: continue each context (prompt and response so
    far, token ids) by at most ``budgets[k]`` tokens, until a stop token or until the decoded
    new text contains one of ``stop`` (the piece ends with the token completing it).

    ``rows[k]`` is the sample (row of the batch) that ``contexts[k]`` continues and
    ``round_index`` counts the calls of this rollout (0 first), so a backend seeding each
    request can give every (row, round) its own stream whichever rows are still going.
    """

    def __call__(
        self,
        contexts: list[list[int]],
        budgets: list[int],
        stop: Sequence[str],
        params: SamplingParams,
        *,
        rows: Sequence[int],
        round_index: int,
    ) -> list[Piece]: ...


def stop_end(token_ids: list[int], stop: Sequence[str], decode: Callable[[list[int]], str]) -> int:
    """How many of ``token_ids`` to keep: through the first token whose text completes one of
    ``stop`` (all of them if none does). A prefix that contains a stop string keeps it when
    extended, so a binary search needs ~log2(len) decodes, not one per token."""
    if not stop or not any(s in decode(token_ids) for s in stop):
        return len(token_ids)
    lo, hi = 1, len(token_ids)  # the answer is in [lo, hi]: decode(ids[:hi]) has a stop
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode(token_ids[:mid]) for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return hi


@dataclass
class _Row:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tool_mask: list[bool] = field(default_factory=list)
    chars: int = 0  # length of the text the loop has seen of this row
    finished: bool = False


def tool_rollout(
    continue_rows: ContinueRows,
    prompts_token_ids: Sequence[Sequence[int]],
    n: int,
    params: SamplingParams,
    options: ToolOptions,
) -> RolloutBatch:
    """Sample ``n`` tool-integrated responses per prompt (rows grouped by prompt)."""
    contexts = [list(map(int, p)) for p in prompts_token_ids for _ in range(n)]
    state = [_Row() for _ in contexts]
    calls = 0

    def generate(
        texts: Sequence[str], stop: Sequence[str], *, rows: list[int]
    ) -> list[Continuation]:
        nonlocal calls
        todo: list[int] = []
        for text, i in zip(texts, rows):
            row = state[i]
            tool_text = text[row.chars :]  # the interpreter output appended since last round
            row.chars = len(text)
            if tool_text:
                ids = options.encode(tool_text)[: params.max_new_tokens - len(row.tokens)]
                row.tokens += ids
                row.logprobs += [0.0] * len(ids)
                row.tool_mask += [True] * len(ids)
            if len(row.tokens) < params.max_new_tokens:
                todo.append(i)
        pieces = (
            continue_rows(
                [contexts[i] + state[i].tokens for i in todo],
                [params.max_new_tokens - len(state[i].tokens) for i in todo],
                stop,
                params,
                rows=todo,
                round_index=calls,
            )
            if todo
            else []
        )
        calls += 1
        texts_out = dict.fromkeys(rows, "")  # a row out of budget ends with an empty piece
        for i, piece in zip(todo, pieces):
            row = state[i]
            row.tokens += piece.token_ids
            row.logprobs += piece.logprobs
            row.tool_mask += [False] * len(piece.token_ids)
            row.finished = piece.hit_stop_token
            texts_out[i] = options.decode(piece.token_ids)
            row.chars += len(texts_out[i])
        return [Continuation(texts_out[i]) for i in rows]

    traces = run_tool_loop(
        [""] * len(contexts), generate, options.sandbox, options.loop, with_rows=True
    )
    return RolloutBatch(
        token_ids=[r.tokens for r in state],
        logprobs=[r.logprobs for r in state],
        finished=[r.finished for r in state],
        prompt_index=[j // n for j in range(len(state))],
        tool_mask=[r.tool_mask for r in state],
        tool_use=[
            ToolUse(t.rounds, t.failed_executions, t.sandbox_s, t.hit_round_limit) for t in traces
        ],
    )
