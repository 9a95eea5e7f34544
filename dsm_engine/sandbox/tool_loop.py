"""The multi-round generate -> execute -> append loop of tool-integrated reasoning.

Independent of how text is generated: the caller passes a ``generate(prompts, stop)``
callable (a transformers or vLLM generator in ``dsm eval``, a policy's sampler in RL) and a
:class:`~dsm_engine.sandbox.Sandbox`. Per round, every unfinished sample is continued until
it stops; a sample that stopped at the ``` ```output`` fence has its code run (all samples'
programs in one sandbox batch) and the interpreter's output appended; the others are done::

    traces = run_tool_loop(prompts, generate, sandbox, ToolLoopConfig(max_rounds=4))
    traces[0].text        # the whole solution, tool outputs included
    traces[0].spans       # model / tool pieces (mask the tool ones from a policy loss)
    traces[0].executions  # one ExecResult per executed block

A generator that keeps its own per-sample state (RL rollouts continue each sample's *token*
ids, which text cannot recover exactly) passes ``with_rows=True`` and is then called as
``generate(prompts, stop, rows=...)``, ``rows[k]`` being the sample that ``prompts[k]`` continues.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dsm_engine.sandbox.pool import ExecResult, Sandbox
from dsm_engine.sandbox.tir_format import (
    OUTPUT_FENCE,
    Span,
    format_output,
    program_for,
    python_blocks,
)

__all__ = ["Continuation", "GenerateUntil", "ToolLoopConfig", "ToolTrace", "run_tool_loop"]


@dataclass
class Continuation:
    """What the model wrote for one prompt in one round.

    text: the generated text, *including* the stop string that ended it, if one did (a
        continuation that ends with ``` ```output`` asks for its last code block to be run).
    extra: anything the generator wants kept with this piece (token ids, log-probs); the loop
        stores it on the trace untouched.
    """

    text: str
    extra: Any = None


class GenerateUntil(Protocol):
    """``generate(prompts, stop)``: one :class:`Continuation` per prompt, each ending right
    after the first of the ``stop`` strings it produced, or where the model ended (EOS or
    its token budget)."""

    def __call__(self, prompts: Sequence[str], stop: Sequence[str]) -> Sequence[Continuation]: ...


@dataclass(frozen=True)
class ToolLoopConfig:
    """max_rounds: code executions per sample; a sample still asking after that many ends.
    stop: extra strings that end a sample for good (e.g. the start of a next few-shot
        question), besides ``` ```output``.
    output_chars: longer interpreter outputs are elided in the middle.
    replay: each block runs after the sample's earlier blocks (notebook-like), see
        :func:`~dsm_engine.sandbox.tir_format.program_for`.
    """

    max_rounds: int = 4
    stop: tuple[str, ...] = ()
    output_chars: int = 512
    replay: bool = True

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise ValueError(f"ToolLoopConfig.max_rounds must be >= 0, got {self.max_rounds}")
        if self.output_chars < 16:
            raise ValueError(f"ToolLoopConfig.output_chars must be >= 16, got {self.output_chars}")


@dataclass
class ToolTrace:
    """One sample's solution as it grew: spans in order, the executions, and the extras of
    its model spans (``model_extras[k]`` belongs to the k-th model span)."""

    spans: list[Span] = field(default_factory=list)
    executions: list[ExecResult] = field(default_factory=list)
    model_extras: list[Any] = field(default_factory=list)
    hit_round_limit: bool = False
    sandbox_s: float = 0.0  # wall-clock time spent waiting for this sample's programs

    @property
    def text(self) -> str:
        return "".join(span.text for span in self.spans)

    @property
    def rounds(self) -> int:
        return len(self.executions)

    @property
    def failed_executions(self) -> int:
        return sum(not r.ok for r in self.executions)


def feedback(result: ExecResult) -> str:
    """What the model sees of an execution: the printed output, then the error line if the
    program failed (tracebacks are long and point into the sandbox's own frames)."""
    if result.ok:
        return result.stdout
    return "\n".join(t for t in (result.stdout.rstrip("\n"), result.error) if t)


def run_tool_loop(
    prompts: Sequence[str],
    generate: GenerateUntil | Callable[..., Sequence[Continuation]],
    sandbox: Sandbox,
    config: ToolLoopConfig | None = None,
    *,
    with_rows: bool = False,
) -> list[ToolTrace]:
    """Tool-integrated generation for every prompt; one :class:`ToolTrace` per prompt.

    with_rows: also tell ``generate`` which sample each of its prompts is (``rows=``).
    """
    config = config or ToolLoopConfig()
    stop = (OUTPUT_FENCE, *config.stop)
    traces = [ToolTrace() for _ in prompts]
    active = list(range(len(prompts)))
    for round_ in range(config.max_rounds + 1):
        batch = [prompts[i] + traces[i].text for i in active]
        if with_rows:
            continuations = generate(batch, stop, rows=list(active))
        else:
            continuations = generate(batch, stop)
        if len(continuations) != len(active):
            raise ValueError(
                f"generate returned {len(continuations)} continuations for {len(active)} prompts"
            )
        wants_tool: list[tuple[int, str]] = []
        for i, piece in zip(active, continuations):
            trace = traces[i]
            trace.spans.append(Span(piece.text, "model"))
            trace.model_extras.append(piece.extra)
            if not piece.text.endswith(OUTPUT_FENCE):
                continue
            if not python_blocks(piece.text):
                continue  # asked for output without writing code: nothing to run, done
            if round_ == config.max_rounds:
                trace.hit_round_limit = True
            else:
                program = program_for(python_blocks(trace.text), config.replay)
                wants_tool.append((i, program))
        if not wants_tool:
            break
        start = time.monotonic()
        results = sandbox.run_many([program for _, program in wants_tool])
        elapsed = time.monotonic() - start
        for (i, _), result in zip(wants_tool, results):
            trace = traces[i]
            trace.spans.append(Span(format_output(feedback(result), config.output_chars), "tool"))
            trace.executions.append(result)
            trace.sandbox_s += elapsed / len(wants_tool)
        active = [i for i, _ in wants_tool]
    return traces
