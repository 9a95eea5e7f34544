"""Plain-Python reference n-gram matcher: the semantics the C++ index must reproduce exactly.

The rule (DeepSeekMath §2.1): a benchmark text of at least ``n`` (10) words contributes every
``n``-gram of its words; a text of ``min_short`` (3) to ``n - 1`` words contributes its whole
word sequence, matched exactly; shorter texts contribute nothing. Words and segments are those
of :mod:`decont_text`.

Matching a document: its words form one stream across its lines. Scanning start positions
``p`` left to right, and at each ``p`` the indexed lengths from longest to shortest, the first
length whose word sequence is indexed is a *hit*; it covers the lines from the one holding
its first word to the one holding its last (word-less lines in between included). Each covered line not yet covered by an earlier hit is contaminated and
reports this hit's n-gram (words joined by single spaces) and the benchmarks that hold it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dsm_engine.data_pipeline.benchmark_texts import BenchmarkText
from dsm_engine.data_pipeline.decont_text import normalize, split_segments, words

MAX_BENCHMARKS = 32  # one bit each in a 32-bit mask


@dataclass(frozen=True)
class SegmentMatch:
    """A contaminated segment (line) of a document and the first n-gram that covers it."""

    segment: int
    ngram: str
    benchmarks: tuple[str, ...]


def normalize_document(text: str) -> str:
    """:func:`decont_text.normalize` of a whole document, with its lines kept in place."""
    norm = normalize(text)
    if norm.count("\n") != text.count("\n"):  # cannot happen with NFKC; checked, not assumed
        norm = "\n".join(normalize(line) for line in split_segments(text))
    return norm


class NGramMatcher:
    """Shared bookkeeping of both matchers: benchmark names <-> bits, bulk loading."""

    def __init__(self, n: int = 10, min_short: int = 3) -> None:
        if not 1 <= min_short <= n < 64:
            raise ValueError(f"need 1 <= min_short <= n < 64, got n={n}, min_short={min_short}")
        self.n = n
        self.min_short = min_short
        self.benchmark_names: list[str] = []
        self.texts_indexed = 0

    def benchmark_id(self, name: str) -> int:
        """Bit index of benchmark ``name``, registering it on first use."""
        if name not in self.benchmark_names:
            if len(self.benchmark_names) >= MAX_BENCHMARKS:
                raise ValueError(f"at most {MAX_BENCHMARKS} benchmarks per index")
            self.benchmark_names.append(name)
        return self.benchmark_names.index(name)

    def names_of(self, mask: int) -> tuple[str, ...]:
        return tuple(name for i, name in enumerate(self.benchmark_names) if mask >> i & 1)

    def add_texts(self, texts: Iterable[BenchmarkText]) -> None:
        """Index every benchmark text."""
        for t in texts:
            self.add(t.text, t.benchmark)

    def add(self, text: str, benchmark: str) -> int:
        """Index one benchmark text; returns its word count."""
        raise NotImplementedError

    def query(self, docs: Sequence[str]) -> list[list[SegmentMatch]]:
        """Contaminated segments of each document, in segment order."""
        raise NotImplementedError

    @property
    def num_keys(self) -> int:
        raise NotImplementedError


class ReferenceNGramIndex(NGramMatcher):
    """Exact matcher on word tuples (no hashing), written for clarity rather than speed."""

    def __init__(self, n: int = 10, min_short: int = 3) -> None:
        super().__init__(n, min_short)
        self._table: dict[tuple[str, ...], int] = {}
        self._lengths: set[int] = set()

    @property
    def num_keys(self) -> int:
        return len(self._table)

    def add(self, text: str, benchmark: str) -> int:
        bit = 1 << self.benchmark_id(benchmark)
        ws = words(normalize(text))
        if len(ws) >= self.n:
            keys = [tuple(ws[p : p + self.n]) for p in range(len(ws) - self.n + 1)]
        elif len(ws) >= self.min_short:
            keys = [tuple(ws)]
        else:
            keys = []
        for key in keys:
            self._table[key] = self._table.get(key, 0) | bit
            self._lengths.add(len(key))
        self.texts_indexed += 1
        return len(ws)

    def query(self, docs: Sequence[str]) -> list[list[SegmentMatch]]:
        return [self._query_one(doc) for doc in docs]

    def _query_one(self, doc: str) -> list[SegmentMatch]:
        stream: list[str] = []
        segment_of: list[int] = []
        for s, line in enumerate(split_segments(normalize_document(doc))):
            line_words = words(line)
            stream.extend(line_words)
            segment_of.extend([s] * len(line_words))
        lengths = sorted(self._lengths, reverse=True)
        best: dict[int, SegmentMatch] = {}
        for p in range(len(stream)):
            max_len = min(self.n, len(stream) - p)
            if max_len < self.min_short:
                break
            for length in lengths:
                if length > max_len:
                    continue
                key = tuple(stream[p : p + length])
                mask = self._table.get(key, 0)
                if not mask:
                    continue
                hit = SegmentMatch(-1, " ".join(key), self.names_of(mask))
                for s in range(segment_of[p], segment_of[p + length - 1] + 1):
                    if s not in best:
                        best[s] = SegmentMatch(s, hit.ngram, hit.benchmarks)
                break
        return [best[s] for s in sorted(best)]
