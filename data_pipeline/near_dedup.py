"""Exact URL dedup and MinHash near-dedup (stage 4), on datatrove's dedup stages.

URL dedup: datatrove's ``ExactDedupSignature`` / ``ExactFindDedups`` / ``ExactDedupFilter``
keyed by the normalised URL (``urls.url_dedup_key``): one document per URL survives.

Near-dedup: datatrove's four MinHash stages (signature -> buckets -> clusters -> filter) with
these defaults (``MinHashParams``): word 5-gram shingles over lower-cased, punctuation-free
text; 14 bands ("buckets") of 8 hashes each (112 hashes, 64-bit). Two pages become one
cluster when all 8 hashes of any band agree: the probability is ``1 - (1 - s**8)**14`` for
Jaccard similarity ``s`` of their shingle sets, i.e. 0.92 at s = 0.8, 0.65 at s = 0.72, 0.50 at
s ~ 0.69 and 0.05 at s = 0.5. One page per cluster is kept. Words come from :class:`MathWordTokenizer`
(no NLTK data download; CJK characters count as words, so Chinese pages shingle too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from .urls import url_dedup_key

_WORD = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+|\\[A-Za-z]+", re.UNICODE
)
_SENT = re.compile(r"(?<=[.!?。！？])\s+|\n+")


class MathWordTokenizer(WordTokenizer):
    """Regex word splitter: alphanumeric runs, LaTeX commands, single CJK characters."""

    def __init__(self) -> None:
        super().__init__("any")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in _SENT.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for sent in self.sent_tokenize(text):
            begin = text.index(sent, start)
            spans.append((begin, begin + len(sent)))
            start = begin + len(sent)
        return spans


@dataclass
class MinHashParams:
    """Near-dedup parameters (see the module docstring for the resulting threshold)."""

    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1

    def to_datatrove(self) -> MinhashConfig:
        return MinhashConfig(
            n_grams=self.n_grams,
            num_buckets=self.num_buckets,
            hashes_per_bucket=self.hashes_per_bucket,
            seed=self.seed,
            hash_config=HashConfig(precision=64),
        )

    def match_probability(self, jaccard: float) -> float:
        """Probability that two pages with this shingle Jaccard similarity are clustered."""
        return 1.0 - (1.0 - jaccard**self.hashes_per_bucket) ** self.num_buckets


def url_dedup_config() -> ExactDedupConfig:
    """Exact dedup keyed by the normalised URL (first occurrence in file order wins)."""
    return ExactDedupConfig(content_getter=url_dedup_key)
