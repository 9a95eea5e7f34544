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

from dsm_engine.rollout.base import RolloutBatch, SamplingParams, ToolUse
from dsm_engine.sandbox import Sandbox
from dsm_engine.sandbox.tool_loop import Continuation, ToolLoopConfig, run_tool_loop

__all__ = ["ContinueRows", "Piece", "ToolOptions", "tool_rollout"]


@dataclass(frozen=True)
class ToolOptions:
    """What a backend needs to run tool-integrated rollouts.

    sandbox: runs the programs (owned by the caller, who closes it).
    loop: rounds, output length, replay (``ToolLoopConfig``).
    encode / decode: the policy's tokenizer (no special tokens added; special ones skipped).
    """

    sandbox: Sandbox
    loop: ToolLoopConfig
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


@dataclass
class Piece:
    """One round of one sample: sampled ids, their log-probs, and whether a stop token ended
    it (a stop *string* ends a round but not the response)."""

    token_ids: list[int]
    logprobs: list[float]
    hit_stop_token: bool


#: ``continue_rows(contexts, budgets, stop, params)``: continue each context (prompt and
#: response so far, token ids) by at most ``budgets[k]`` tokens, until a stop token or until
#: the decoded new text contains one of ``stop`` (the piece ends with the token completing it).
ContinueRows = Callable[[list[list[int]], list[int], Sequence[str], SamplingParams], list[Piece]]


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

    def generate(
        texts: Sequence[str], stop: Sequence[str], *, rows: list[int]
    ) -> list[Continuation]:
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
            )
            if todo
            else []
        )
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
