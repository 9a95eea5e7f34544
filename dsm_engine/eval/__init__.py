"""Evaluation harness: GSM8K, MATH, CMATH, AGIEval Gaokao math and MGSM-zh, greedy and
self-consistency scoring, in chain-of-thought, program-of-thought and tool-integrated formats
(``dsm eval``; see ``dsm_engine.eval.cli`` and ``dsm_engine.eval.formats``)."""

from dsm_engine.eval.benchmarks import BENCHMARKS, Example, load_benchmark
from dsm_engine.eval.prompts import build_prompt
from dsm_engine.eval.scoring import majority_vote, pass_at_k, summarize

__all__ = [
    "BENCHMARKS",
    "Example",
    "build_prompt",
    "load_benchmark",
    "majority_vote",
    "pass_at_k",
    "summarize",
]
