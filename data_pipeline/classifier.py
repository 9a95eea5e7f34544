"""The fastText math classifier (stage 5): train, score, rank, keep.

Defaults are DeepSeekMath's (§2.1): vector dimension 256, learning rate 0.1, word n-grams up
to 3, minimum word count 3, 3 epochs; positives are the seed corpus (OpenWebMath in the paper)
and negatives random pages of the pool, as many as positives. Training uses one thread and a
fixed seed so that a re-run (or a resumed run) trains the same model. Text is lower-cased and
split so that LaTeX commands (``\\frac``), braces and operators are words of their own: they
are the strongest math features.

Keeping: pages are ranked by P(math) (ties by id); those with score >= ``threshold`` are kept,
and with a ``token_budget`` only the best ones until the budget is filled (tokens approximated
as words + CJK characters, see :func:`count_tokens`).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from dsm_engine.procs import python_argv

_TOKEN = re.compile(
    r"\\[A-Za-z]+|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]|[^\W_]+|[^\w\s]", re.UNICODE
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
POSITIVE, NEGATIVE = "__label__math", "__label__other"


@dataclass
class ClassifierConfig:
    """fastText hyper-parameters (paper defaults) and the keep rule."""

    dim: int = 256
    lr: float = 0.1
    word_ngrams: int = 3
    min_count: int = 3
    epoch: int = 3
    bucket: int = 2_000_000  # hashed n-gram rows (fastText default); lower it for small runs
    threads: int = 1  # >1 trains faster but not reproducibly
    seed: int = 0
    negatives_per_positive: float = 1.0
    max_words: int = 2000  # words of a page the classifier reads
    threshold: float = 0.6  # keep pages with P(math) >= threshold (no evidence scores 0.5) ...
    token_budget: int = 0  # ... and, when > 0, only the top-ranked ones within this many tokens


def fasttext_text(text: str, max_words: int = 2000) -> str:
    """One line of classifier input: lower-cased words, LaTeX commands and symbols as tokens."""
    return " ".join(_TOKEN.findall(text.lower())[:max_words])


def count_tokens(text: str) -> int:
    """Approximate token count: words and symbols, each CJK character counting as one."""
    return len(_TOKEN.findall(text))


def train_classifier(
    positives: Iterable[str],
    negatives: Iterable[str],
    out_path: str | Path,
    cfg: ClassifierConfig | None = None,
) -> Path:
    """Train P(math) on ``positives`` vs ``negatives`` (texts); save the model to ``out_path``.

    Raises ValueError when either side is empty. Written to a temporary name and renamed, so a
    killed run never leaves a half-written model that a resumed run would trust.
    """
    cfg = cfg or ClassifierConfig()
    lines = [f"{POSITIVE} {fasttext_text(t, cfg.max_words)}" for t in positives]
    n_pos = len(lines)
    lines += [f"{NEGATIVE} {fasttext_text(t, cfg.max_words)}" for t in negatives]
    if n_pos == 0 or len(lines) == n_pos:
        raise ValueError(
            f"classifier training needs positives and negatives (got {n_pos} and {len(lines) - n_pos})"
        )
    random.Random(cfg.seed).shuffle(lines)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    train_file = out_path.with_suffix(".train.txt")
    train_file.write_text("\n".join(lines) + "\n")
    tmp = out_path.with_suffix(".tmp")
    args = {
        "input": str(train_file),
        "output": str(tmp),
        "dim": cfg.dim,
        "lr": cfg.lr,
        "wordNgrams": cfg.word_ngrams,
        "minCount": cfg.min_count,
        "epoch": cfg.epoch,
        "bucket": cfg.bucket,
        "thread": cfg.threads,
        "seed": cfg.seed,
        "verbose": 0,
    }
    # a child process with zero-filled allocations: see _ft_train.py for why
    env = {**os.environ, "MALLOC_PERTURB_": "255"}
    cmd = python_argv(
        "-m", "dsm_engine.data_pipeline._ft_train", json.dumps(args), str(os.getpid())
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        raise RuntimeError(
            f"fastText training failed on {train_file}: {proc.stderr.strip()[-2000:]}"
        )
    os.replace(tmp, out_path)
    train_file.unlink()
    return out_path


@lru_cache(maxsize=2)
def _load(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None
    return fasttext.load_model(path)


def math_score(text: str, model_path: str | Path, max_words: int = 2000) -> float:
    """P(math) of one text under the model at ``model_path``."""
    labels, probs = _load(str(model_path)).predict(fasttext_text(text, max_words), k=2)
    return float(dict(zip(labels, probs)).get(POSITIVE, 0.0))


def keep_rule_problem(
    model_path: str | Path, seed_texts: list[str], cfg: ClassifierConfig, n_train: int
) -> str | None:
    """Why the model at ``model_path`` cannot serve the keep rule, or None.

    The paper's settings (3 epochs at lr 0.1) assume hundreds of thousands of training pages;
    on a few hundred the model barely moves from P(math) = 0.5 for every page. It still ranks
    pages, but a ``threshold`` above what its own seed pages score keeps (almost) nothing, so
    a seed median below the threshold is reported with the settings to change.
    """
    sample = seed_texts[:1000]
    scores = sorted(math_score(t, model_path, cfg.max_words) for t in sample)
    median = scores[len(scores) // 2]
    if median >= cfg.threshold:
        return None
    return (
        f"the math classifier learned too little to keep pages: its own seed pages score "
        f"P(math) {scores[0]:.5f}-{scores[-1]:.5f} (median {median:.5f}), below "
        f"classifier.threshold {cfg.threshold}, so it would keep almost nothing. It trained "
        f"{cfg.epoch} epoch(s) on {n_train} pages, and the paper's settings expect hundreds of "
        f"thousands: raise classifier.epoch (25 works for a few hundred pages) and lower "
        f"classifier.bucket (e.g. 20000), or keep by rank with classifier.threshold=0 "
        f"classifier.token_budget=N; then use a new --out"
    )


class MathScorer(PipelineStep):
    """datatrove step: adds ``math_score`` (P(math)) and ``n_tokens`` to each document."""

    name = "🧮 fastText math score"
    type = "📊 - SCORER"

    def __init__(self, model_path: str, max_words: int = 2000):
        super().__init__()
        self.model_path = str(model_path)
        self.max_words = max_words

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                score = math_score(doc.text, self.model_path, self.max_words)
            doc.metadata["math_score"] = round(score, 6)
            doc.metadata["n_tokens"] = count_tokens(doc.text)
            self.stat_update("scored")
            if score >= 0.5:
                self.stat_update("p_math_over_half")
            yield doc


def select_top(
    scores: Iterable[tuple[str, float, int]], threshold: float = 0.5, token_budget: int = 0
) -> list[str]:
    """Ids to keep from ``(id, score, n_tokens)`` rows, best first.

    Rank by score (descending, ties by id); keep rows with score >= ``threshold``; with a
    ``token_budget`` > 0 stop before the first page that would exceed it.
    """
    ranked = sorted(scores, key=lambda r: (-r[1], r[0]))
    kept, used = [], 0
    for doc_id, score, n_tokens in ranked:
        if score < threshold:
            break
        if token_budget > 0 and used + n_tokens > token_budget:
            break
        kept.append(doc_id)
        used += n_tokens
    return kept
