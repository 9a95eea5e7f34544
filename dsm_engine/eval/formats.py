"""Solution formats of ``dsm eval --format``: chain-of-thought, program-of-thought, tool-integrated.

Each format turns benchmark questions into prompts, generates, runs code where it must, and
returns what the per-sample records hold: the model's text (``output``), the text the
verifier grades (for PoT the program's printed answer, else the output itself) and, for the
tool formats, a summary of the executions (``tool``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm_engine.eval.benchmarks import Example
from dsm_engine.eval.generation import GenerationConfig, Generator
from dsm_engine.eval.prompts import build_prompt, stop_strings
from dsm_engine.eval.tool_prompts import (
    POT_BENCHES,
    TIR_BENCHES,
    build_pot_prompt,
    build_tir_prompt,
    pot_stop_strings,
)
from dsm_engine.sandbox import ExecResult, Sandbox
from dsm_engine.sandbox.tool_loop import Continuation, ToolLoopConfig, run_tool_loop

__all__ = ["FORMATS", "Generated", "benches_for", "build_format_prompt", "generate_format"]

FORMATS = ("cot", "pot", "tir")
_STDOUT_KEPT = 2000  # characters of a program's output kept in the records


@dataclass
class Generated:
    """Per question, per sample: ``outputs`` (model text), ``graded`` (what the verifier
    reads) and ``tool`` (execution summary dicts; None for chain-of-thought)."""

    outputs: list[list[str]]
    graded: list[list[str]]
    tool: list[list[dict[str, Any]]] | None = None


def benches_for(fmt: str) -> tuple[str, ...] | None:
    """Benchmarks a format may run on (None: all)."""
    return {"pot": POT_BENCHES, "tir": TIR_BENCHES}.get(fmt)


def build_format_prompt(fmt: str, example: Example, shots: int, data_dir: str | Path | None) -> str:
    """The prompt of ``example`` in format ``fmt``."""
    if fmt == "pot":
        return build_pot_prompt(example, shots)
    if fmt == "tir":
        return build_tir_prompt(example, shots)
    return build_prompt(example, shots, data_dir)


def _answer_of_program(result: ExecResult) -> str:
    """A program's answer as gradable text: its last printed line, boxed ('' if none)."""
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not result.ok or not lines:
        return ""
    return f"\\boxed{{{lines[-1]}}}"


def _summary(result: ExecResult) -> dict[str, Any]:
    return {"status": result.status, "stdout": result.stdout[:_STDOUT_KEPT], "error": result.error}


def _pot(
    generator: Generator,
    examples: Sequence[Example],
    prompts: list[str],
    config: GenerationConfig,
    sandbox: Sandbox,
    on_batch: Callable[[int], None] | None,
) -> Generated:
    config = dataclasses.replace(config, stop=tuple(pot_stop_strings(examples[0])))
    outputs = generator.generate(prompts, config, on_batch=on_batch)
    results = iter(sandbox.run_many([o for outs in outputs for o in outs]))
    graded, tool = [], []
    for outs in outputs:
        runs = [next(results) for _ in outs]
        graded.append([_answer_of_program(r) for r in runs])
        tool.append([_summary(r) for r in runs])
    return Generated(outputs, graded, tool)


def _tir(
    generator: Generator,
    examples: Sequence[Example],
    prompts: list[str],
    config: GenerationConfig,
    sandbox: Sandbox,
    max_rounds: int,
) -> Generated:
    samples = config.num_samples
    # every sample is its own trajectory: prompts repeat, one completion each per round
    flat_prompts = [p for p in prompts for _ in range(samples)]
    step = dataclasses.replace(config, num_samples=1, keep_stop=True)

    def generate(batch: Sequence[str], stop: Sequence[str]) -> list[Continuation]:
        texts = generator.generate(list(batch), dataclasses.replace(step, stop=tuple(stop)))
        return [Continuation(t[0]) for t in texts]

    loop = ToolLoopConfig(max_rounds=max_rounds, stop=tuple(stop_strings(examples[0])))
    traces = run_tool_loop(flat_prompts, generate, sandbox, loop)
    outputs, tool = [], []
    for q in range(len(prompts)):
        chunk = traces[q * samples : (q + 1) * samples]
        outputs.append([t.text for t in chunk])
        tool.append(
            [
                {
                    "rounds": t.rounds,
                    "hit_round_limit": t.hit_round_limit,
                    "executions": [_summary(r) for r in t.executions],
                }
                for t in chunk
            ]
        )
    return Generated(outputs, outputs, tool)


def generate_format(
    fmt: str,
    generator: Generator,
    examples: Sequence[Example],
    prompts: list[str],
    config: GenerationConfig,
    *,
    sandbox: Sandbox | None = None,
    max_rounds: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> Generated:
    """Generate (and execute) ``fmt`` solutions for ``examples`` from their ``prompts``.

    config: decoding settings (its ``stop`` is set here per format).
    sandbox: runs the programs of ``pot`` and ``tir``.
    on_batch: progress callback, called with the number of questions finished.
    """
    if fmt == "cot":
        config = dataclasses.replace(config, stop=tuple(stop_strings(examples[0])))
        outputs = generator.generate(prompts, config, on_batch=on_batch)
        return Generated(outputs, outputs)
    if sandbox is None:
        raise ValueError(f"--format {fmt} runs model-written code: it needs a sandbox")
    if fmt == "pot":
        return _pot(generator, examples, prompts, config, sandbox, on_batch)
    if fmt == "tir":
        generated = _tir(generator, examples, prompts, config, sandbox, max_rounds)
        if on_batch is not None:
            on_batch(len(prompts))
        return generated
    raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
