"""The symbolic half of the equivalence check, run only inside worker processes.

Workers are plain ``python -m dsm_engine.rewards._symbolic`` subprocesses speaking JSON lines
(not multiprocessing children: spawn/forkserver re-run the caller's ``__main__`` script, and
fork copies a trainer's threads). Both answers go through math-verify's LaTeX parser (``latex2sympy2_extended``, an ANTLR
grammar that builds SymPy objects directly). We deliberately do NOT enable math-verify's
``ExprExtractionConfig``: that path hands text to SymPy's ``parse_expr``, which calls
Python's ``eval`` and would run model text such as ``__import__('os').system(...)``.

A worker may hang inside C code (big-integer powers, factorials) where no signal can
interrupt it; the parent process therefore owns the hard time limit and kills the worker.
The signal-based limits below only make the common slow cases cheaper (no respawn).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from functools import lru_cache
from typing import BinaryIO

from math_verify import LatexExtractionConfig, parse, verify

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),)
_INNER_TIMEOUT_S = 1
# math-verify rounds decimals to 6 places by default (1.414214 "equals" sqrt(2)); 12 places
# keeps exact decimals equal to their fractions and rejects approximations
_FLOAT_ROUNDING = 12


@lru_cache(maxsize=4096)
def _parse_answer(answer: str) -> tuple:
    """Parse one bare answer (already extracted) into math-verify's SymPy candidates."""
    parsed = parse(
        "\\boxed{" + answer + "}",
        extraction_config=_EXTRACTION,
        fallback_mode="no_fallback",
        parsing_timeout=_INNER_TIMEOUT_S,
    )
    return tuple(parsed)


def symbolic_equal(gold: str, pred: str) -> bool:
    """True when math-verify proves ``pred`` equal to ``gold`` (asymmetric, gold first)."""
    gold_parsed = _parse_answer(gold)
    if not gold_parsed:
        return False
    pred_parsed = _parse_answer(pred)
    if not pred_parsed:
        return False
    verdict = verify(
        list(gold_parsed),
        list(pred_parsed),
        float_rounding=_FLOAT_ROUNDING,
        timeout_seconds=_INNER_TIMEOUT_S,
    )
    return bool(verdict)


def serve(stdin: BinaryIO, stdout: BinaryIO, memory_limit_mb: int, inner_timeout_s: int) -> None:
    """Answer JSON-line requests ``[gold, pred]`` on ``stdin`` with ``1``/``0`` lines.

    Writes ``ready`` once math-verify is loaded and warm, so the parent's clock for the first
    request does not include the import.
    """
    global _INNER_TIMEOUT_S
    _INNER_TIMEOUT_S = max(1, int(inner_timeout_s))
    if memory_limit_mb > 0:
        # a runaway SymPy computation must fail with MemoryError, not exhaust the machine
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # math-verify logs every timeout as a warning; the parent reports outcomes instead
    logging.disable(logging.CRITICAL)
    symbolic_equal("1", "1")  # load the ANTLR grammar now, not inside the first timed check
    stdout.write(b"ready\n")
    stdout.flush()
    for line in stdin:
        try:
            gold, pred = json.loads(line)
            answer = symbolic_equal(str(gold), str(pred))
        except BaseException:  # noqa: BLE001 - any failure (MemoryError, RecursionError) is "not equal"
            answer = False
        stdout.write(b"1\n" if answer else b"0\n")
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """``python -m dsm_engine.rewards._symbolic MEMORY_MB INNER_TIMEOUT_S``: one worker."""
    args = sys.argv[1:] if argv is None else argv
    memory_mb, inner = (int(args[0]), int(args[1])) if len(args) == 2 else (2048, 1)
    serve(sys.stdin.buffer, sys.stdout.buffer, memory_mb, inner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
