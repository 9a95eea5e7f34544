"""Synthetic arithmetic: pretraining text, word problems with numeric answers, a tiny tokenizer.

The task exists so that the whole RL stack can be shown to learn on two CPU cores: a tiny model
is pretrained on generated text (bare sums and worked word problems), then GRPO trains it on word
problems it has never seen and a held-out split measures exact-match accuracy.

Splits are assigned by a stable hash of ``(template, a, b)``: a word problem (up to the names
and objects filling it) belongs to exactly one split. Bare equations in the pretraining text
cover all operands, as arithmetic facts a pretrained model would know; the word problems of the
train and held-out splits never appear in it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

COT_TEMPLATE = "Please reason step by step, and put your final answer within \\boxed{}."
# The tiny task's prompt: the CoT instruction is left out to keep sequences short on CPU
# (the worked solutions still end in \boxed{}, which is what the verifier reads).
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

SPLITS = ("pretrain", "train", "heldout")
# Percent of the (op, a, b) space each split owns, by hash bucket.
_SPLIT_BUCKETS = {"heldout": range(0, 10), "train": range(10, 45), "pretrain": range(45, 100)}

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo")
OBJECTS = ("apples", "books", "coins", "pens", "shells", "stamps", "cards", "marbles")

# (op, template); {n} name, {o} object, {a} {b} operands. Each yields an integer answer.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("+", "{n} has {a} {o}. {n} gets {b} more {o}. How many {o} does {n} have now?"),
    ("+", "There are {a} {o} in a box and {b} {o} on a table. How many {o} are there in all?"),
    ("-", "{n} has {a} {o} and gives away {b} of them. How many {o} are left?"),
    ("-", "A shop had {a} {o}. It sold {b} {o}. How many {o} does the shop have now?"),
    ("*", "{n} buys {a} bags with {b} {o} in each bag. How many {o} does {n} buy?"),
    ("*", "There are {a} rows of {o} with {b} {o} in each row. How many {o} are there?"),
)


@dataclass(frozen=True)
class Problem:
    """One word problem: ``question`` text, integer ``answer`` and the arithmetic behind it."""

    question: str
    answer: int
    template: int
    op: str
    a: int
    b: int

    def solution(self, op: str | None = None) -> str:
        """A worked solution ending in the boxed answer (the format rewards check).

        ``op`` writes the solution with another operation (a wrong solution, as noisy
        pretraining text has them)."""
        op = op or self.op
        value = _apply(op, self.a, self.b)
        return f" {self.a} {op} {self.b} = {value}. The answer is \\boxed{{{value}}}."

    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(question=self.question)


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"op must be one of + - *, got {op!r}")


def split_of(template: int, a: int, b: int) -> str:
    """The split owning word problems of ``TEMPLATES[template]`` with operands ``a, b``."""
    bucket = int(hashlib.sha1(f"{template}|{a}|{b}".encode()).hexdigest(), 16) % 100
    for name, rng in _SPLIT_BUCKETS.items():
        if bucket in rng:
            return name
    raise AssertionError("buckets cover 0..99")


# The operation a careless solution uses instead (noisy pretraining text).
CONFUSED_OP = {"+": "-", "-": "+", "*": "+"}


def _operands(op: str, rng: random.Random, max_operand: int) -> tuple[int, int]:
    if op == "*":
        return rng.randint(2, min(9, max_operand)), rng.randint(2, min(9, max_operand))
    a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
    if op == "-" and b > a:  # answers stay non-negative
        a, b = b, a
    return a, b


def iter_problems(split: str, seed: int, max_operand: int = 9) -> Iterator[Problem]:
    """Endless word problems of ``split`` drawn with ``seed`` (operands in 1..max_operand)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{split}:{seed}")
    while True:
        t = rng.randrange(len(TEMPLATES))
        op, template = TEMPLATES[t]
        a, b = _operands(op, rng, max_operand)
        if split_of(t, a, b) != split:
            continue
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        question = template.format(n=name, o=obj, a=a, b=b)
        yield Problem(question, _apply(op, a, b), t, op, a, b)


def make_problems(split: str, n: int, seed: int = 0, max_operand: int = 9) -> list[Problem]:
    """``n`` distinct problems (by question text) of ``split``; fewer if the split runs out."""
    out: dict[str, Problem] = {}
    stale = 0
    for p in iter_problems(split, seed, max_operand):
        stale = stale + 1 if p.question in out else 0
        out.setdefault(p.question, p)
        if len(out) >= n or stale > 10_000:  # the split holds fewer distinct problems
            break
    return list(out.values())


def pretraining_texts(
    n: int,
    seed: int = 0,
    max_operand: int = 9,
    word_fraction: float = 0.5,
    wrong_op_rate: float = 0.4,
) -> list[str]:
    """``n`` pretraining documents: worked word problems (pretrain split) and bare equations.

    A ``word_fraction`` of documents is a prompt in the RL format followed by a worked
    solution; a ``wrong_op_rate`` share of those solutions is careless (it uses the confusable
    operation of ``CONFUSED_OP``), so the pretrained model knows the arithmetic but answers
    word problems only sometimes right: the room that RL with a verifier reward closes. The
    rest are runs of four bare (correct) equations over all operands. No word problem of the
    train or held-out splits appears.
    """
    rng = random.Random(f"pretrain-text:{seed}")
    problems = iter_problems("pretrain", seed, max_operand)
    docs = []
    for _ in range(n):
        if rng.random() < word_fraction:
            p = next(problems)
            op = CONFUSED_OP[p.op] if rng.random() < wrong_op_rate else p.op
            docs.append(p.prompt() + p.solution(op))
        else:
            eqs = []
            for _ in range(4):
                op = rng.choice("+-*")
                a, b = _operands(op, rng, max_operand)
                eqs.append(f"{a} {op} {b} = {_apply(op, a, b)}.")
            docs.append(" ".join(eqs))
    return docs


def write_jsonl(problems: list[Problem], path: str | Path) -> Path:
    """Write ``{"question", "answer", "solution"}`` rows (the GRPO prompt format; the worked
    solution is what ``algorithm.name: sft`` trains on) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            row = {"question": p.question, "answer": str(p.answer), "solution": p.solution()}
            f.write(json.dumps(row) + "\n")
    return path


def build_tokenizer(texts: list[str], path: str | Path, vocab_size: int = 384) -> Path:
    """Train a byte-level BPE on ``texts`` with one token per digit and save ``tokenizer.json``.

    Digits are split individually so numbers are spelled digit by digit (what makes arithmetic
    learnable for a tiny model). Special tokens: ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2).
    Loadable with :func:`load_tokenizer` (transformers ``PreTrainedTokenizerFast``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load_tokenizer(path: str | Path):
    """The tokenizer saved by :func:`build_tokenizer` as a ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def write_pretraining_corpus(
    texts: list[str], tokenizer_path: str | Path, prefix: str | Path
) -> tuple[Path, int]:
    """Tokenise ``texts`` (``<bos> text <eos>`` each) into a megatron indexed dataset.

    Writes ``prefix.bin``/``prefix.idx`` (what ``dsm train pretrain``'s ``data.paths`` read);
    returns the prefix and the ``<eos>`` id (the documents' end-of-document token).
    """
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids = [bos, *enc.ids, eos]
        builder.add_document(torch.tensor(ids, dtype=torch.int32), [len(ids)])
    builder.finalize(str(prefix) + ".idx")
    return prefix, eos
