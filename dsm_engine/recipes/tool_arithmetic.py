"""The CPU proof that GRPO with tool-integrated rollouts learns to call the tool.

The task: sums and products of operands too large for a ~0.4M-parameter model to work out
in its head (``4821 + 3730``, ``482 * 73``; every answer of an operation has the same number
of digits, see ``SUM_OPERANDS``). The pretraining text answers such questions
in two ways, in the tool-integrated (tir) format of ``dsm_engine.sandbox.tir_format``::

    Question: What is 482 * 73?
    Answer:
    ```python
    print(482 * 73)
    ```
    ```output
    35186
    ```
    The answer is \\boxed{35186}.

or directly (``Answer: The answer is \\boxed{35186}.``); ``tool_fraction`` of the documents
use the tool. Both are correct text, but only the tool
path is one the tiny model can follow: copying the operands into ``print`` and the printed
value into the box is easy, computing the value is not. So the pretrained policy answers
directly (and wrongly) about as often as ``1 - tool_fraction``, leaving the tool-call rate
room to rise.

Then GRPO twice from the same checkpoint: with ``rollout.tools: python`` (the sandbox runs
the blocks; the printed values are masked from the loss) and with tools off (a ``python``
block is followed by whatever output the model makes up). The verifier reward favours the
samples that used the tool, so the tool run learns to call it and its held-out accuracy
(greedy, evaluated the way it was trained: with the tool) rises; the no-tool run has nothing
to learn from.

Measured on this task (2 CPU cores shared with other jobs, load 2-14 during the runs; corpus
seed 0, 4000 documents, ``tool_fraction`` 0.5; batch 32 x 96 tokens at 3e-3; held-out greedy
exact match on 50 problems; ``benchmarks/paper/tool_grpo.py``, pretraining resumed in
sittings of 300 steps except where said):

* Pretraining must reach copying, and it is slow to: the loss sits at ~0.85 from step ~100 to
  ~300, then falls slowly (0.82 at 300, 0.745 at 600, 0.67 at 900, 0.62 at 1000). From the
  600-step checkpoint no tool-using sample of 12 GRPO steps was right (tool-call rate 0.45 ->
  0.45, held-out 0.00 in both runs); from the 900-step one, 2 of 768 samples were (rate 0.42
  -> 0.53 over the last three of 12 steps, held-out 0.00 -> 0.02; no-tool run 0.00).
* From the 1200-step checkpoint (loss ~0.60; the defaults), 16 GRPO steps with the tool.
  The committed ``benchmarks/results/tool_grpo`` (one run from scratch, default command):
  tool-call rate of the samples 0.52 (step 1) -> 0.98 (step 16), held-out accuracy 0.12
  (step 0) -> 0.46 / 0.38 / 0.36 / 0.34 (steps 4 / 8 / 12 / 16). Pretrained in the sittings
  above instead, the policy differed (the resumed runs were not the same run after all): rate
  0.50 -> 0.98, held-out 0.06 -> 0.62 / 0.68 / 0.58 / 0.58. With tools off, held-out 0.00 at
  every evaluation in both. One corpus seed.
  The step costs 0.44 s unloaded and ~2.3 s at load 11, so pretraining alone takes longer
  than a slow test may.
* The earlier task (5-digit + 4-digit sums, 4-digit * 2-digit products, ``tool_fraction``
  0.3, answers of varying length), by hand: 400 + 400 pretraining steps (the second 400 from
  the first's checkpoint, data seed 2, no warm-up; loss 0.95 -> 0.74), then 20 GRPO steps
  with the tool: tool-call rate 0.20 (step 1) -> 0.95 (steps 9-20), held-out accuracy (100
  problems) 0.00 -> 0.44; with tools off 0.00 throughout.

Still to do: a slow test needs the whole proof within ~4 CPU minutes; with the copying
reached only after ~1000-1200 pretraining steps (~8 minutes unloaded) no setting tried fits
(smaller batches or sequences, other learning rates and a second seed are not measured).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm_engine.recipes.arithmetic import TINY_MODEL, DemoPaths, _merge
from dsm_engine.recipes.arithmetic import pretrain as arithmetic_pretrain
from dsm_engine.tasks import arithmetic as ar

PROMPT_TEMPLATE = "Question: What is {question}?\nAnswer:"
# Prompt + a tool-using solution take ~70 tokens (digits are single tokens).
MODEL: dict[str, Any] = {**TINY_MODEL, "seq_length": 96, "max_position_embeddings": 128}
MAX_NEW_TOKENS = 80


@dataclass(frozen=True)
class Problem:
    """``a op b`` with its integer answer."""

    op: str
    a: int
    b: int

    @property
    def question(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a * self.b

    def tool_solution(self) -> str:
        v = self.answer
        return (
            f"\n```python\nprint({self.a} {self.op} {self.b})\n```\n```output\n{v}\n```\n"
            f"The answer is \\boxed{{{v}}}."
        )

    def direct_solution(self) -> str:
        return f" The answer is \\boxed{{{self.answer}}}."


def split_of(p: Problem) -> str:
    """``heldout`` (10%), ``train`` (35%) or ``pretrain``, by a stable hash of the problem."""
    bucket = int(hashlib.sha1(p.question.encode()).hexdigest(), 16) % 100
    return "heldout" if bucket < 10 else "train" if bucket < 45 else "pretrain"


# Operand ranges (a, b) of the sums and of the products, chosen so that every answer has the
# same number of digits (4 for sums, 5 for products): then each copy (question -> ``print``,
# output -> box) is at a fixed distance per operation, which a tiny model learns fast.
SUM_OPERANDS = ((1000, 4999), (1000, 4999))
PRODUCT_OPERANDS = ((300, 999), (34, 99))


def _operand(rng: random.Random, lo: int, hi: int) -> int:
    """A number in ``[lo, hi]`` without a trailing zero (a zero would make a product easy)."""
    while (n := rng.randint(lo, hi)) % 10 == 0:
        pass
    return n


def make_problems(split: str, n: int, seed: int) -> list[Problem]:
    """``n`` problems of ``split``: half sums of ``SUM_OPERANDS``, half products of
    ``PRODUCT_OPERANDS``."""
    rng = random.Random(f"tool-arith:{split}:{seed}")
    out: list[Problem] = []
    while len(out) < n:
        op, (ra, rb) = ("+", SUM_OPERANDS) if rng.random() < 0.5 else ("*", PRODUCT_OPERANDS)
        p = Problem(op, _operand(rng, *ra), _operand(rng, *rb))
        if split_of(p) == split:
            out.append(p)
    return out


def pretraining_texts(n: int, seed: int = 0, tool_fraction: float = 0.3) -> list[str]:
    """``n`` documents: a prompt and a correct solution, ``tool_fraction`` of them using the
    tool (pretrain split problems only)."""
    rng = random.Random(f"tool-arith-text:{seed}")
    docs = []
    for p in make_problems("pretrain", n, seed):
        solution = p.tool_solution() if rng.random() < tool_fraction else p.direct_solution()
        docs.append(PROMPT_TEMPLATE.format(question=p.question) + solution)
    return docs


def _write_jsonl(problems: list[Problem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps({"question": p.question, "answer": str(p.answer)}) + "\n")
    return path


def prepare(
    root: str | Path, *, num_docs: int = 4000, tool_fraction: float = 0.5, seed: int = 0
) -> tuple[DemoPaths, int]:
    """Tokenizer, pretraining corpus and the train / held-out prompts under ``root``."""
    paths = DemoPaths(Path(root))
    docs = pretraining_texts(num_docs, seed=seed, tool_fraction=tool_fraction)
    ar.build_tokenizer(docs[:5000], paths.tokenizer, vocab_size=MODEL["vocab_size"])
    _, eos = ar.write_pretraining_corpus(docs, paths.tokenizer, paths.corpus)
    _write_jsonl(make_problems("train", 2000, seed), paths.train)
    _write_jsonl(make_problems("heldout", 200, seed + 1), paths.heldout)
    return paths, eos


def pretrain(
    paths: DemoPaths, eos: int, *, steps: int = 1200, progress: bool = True, **overrides: Any
) -> Path:
    """Pretrain the tool task's model (longer sequences than the arithmetic recipe's) on the
    corpus (``overrides``: config sections, merged); returns the checkpoint root."""
    return arithmetic_pretrain(paths, eos, steps=steps, progress=progress, model=MODEL, **overrides)


def grpo_config(paths: DemoPaths, init: Path, *, tools: bool, **overrides: Any):
    """GRPO from ``init`` with ``rollout.tools`` python (``tools``) or none; held-out greedy
    accuracy (with the same tool setting) every 10 steps as ``eval_accuracy``."""
    from dsm_engine.config import from_dict
    from dsm_engine.grpo.config import GRPOConfig

    sections: dict[str, Any] = {
        "run_dir": str(paths.root / ("grpo_tools" if tools else "grpo_no_tools")),
        "overwrite": True,
        "model": dict(MODEL),
        "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
        "schedule": {"name": "constant", "lr": 1e-3, "warmup_steps": 0},
        "checkpoint": {"every": 1000, "load": str(init)},
        "logging": {"tensorboard": False, "progress": True},
        "grpo": {
            "steps": 20,
            "prompts_per_step": 8,
            "group_size": 8,
            "mu": 1,
            "micro_batch_size": 64,
            "beta": 0.04,
        },
        "rollout": {
            "backend": "hf",
            "temperature": 1.0,
            "max_new_tokens": MAX_NEW_TOKENS,
            "tools": "python" if tools else "none",
            "tool_max_rounds": 2,
            "tool_timeout_s": 5.0,
            "tool_workers": 2,
        },
        "data": {
            "path": str(paths.train),
            "tokenizer": str(paths.tokenizer),
            "template": PROMPT_TEMPLATE,
            "max_prompt_tokens": 64,
        },
        "reward": {"name": "verifier", "kind": "auto"},
        "eval": {
            "path": str(paths.heldout),
            "every": 10,
            "num_prompts": 100,
            "max_new_tokens": MAX_NEW_TOKENS,
        },
    }
    _merge(sections, overrides)
    return from_dict(GRPOConfig, sections)
