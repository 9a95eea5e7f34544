"""The fast n-gram index: Python face of the C++ ``dsm_engine._C.NGramIndex``.

Same interface and semantics as :class:`ngram_ref.ReferenceNGramIndex`. Python does the
Unicode normalisation (``unicodedata``); C++ splits words with the class table of
:func:`decont_text.char_class_table`, hashes each word (64-bit), folds word hashes into
length-tagged n-gram keys, and looks them up in an open-addressing table behind a bit
filter. ``query`` releases the GIL while it scans, so threads can share one index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from dsm_engine.data_pipeline.benchmark_texts import BenchmarkText, load_benchmark_texts
from dsm_engine.data_pipeline.decont_text import char_class_table, normalize
from dsm_engine.data_pipeline.ngram_ref import (
    NGramMatcher,
    ReferenceNGramIndex,
    SegmentMatch,
    normalize_document,
)

Backend = Literal["cpp", "python"]


def _utf8(text: str) -> bytes:
    # Lone surrogates (from broken pages) pass through; C++ reads them as separators, as does
    # the Python reference.
    return text.encode("utf-8", "surrogatepass")


class NGramIndex(NGramMatcher):
    """Hashed n-gram index in C++ (``dsm_engine._C``)."""

    def __init__(self, n: int = 10, min_short: int = 3) -> None:
        super().__init__(n, min_short)
        from dsm_engine import _C

        self._index = _C.NGramIndex(char_class_table(), n, min_short)

    @property
    def num_keys(self) -> int:
        return self._index.num_keys

    def add(self, text: str, benchmark: str) -> int:
        count = self._index.add(_utf8(normalize(text)), self.benchmark_id(benchmark))
        self.texts_indexed += 1
        return count

    def add_texts(self, texts: Iterable[BenchmarkText]) -> None:
        texts = list(texts)
        ids = [self.benchmark_id(t.benchmark) for t in texts]
        self._index.add_many([_utf8(normalize(t.text)) for t in texts], ids)
        self.texts_indexed += len(texts)

    def query(self, docs: Sequence[str]) -> list[list[SegmentMatch]]:
        raw = self._index.query([_utf8(normalize_document(d)) for d in docs])
        names: dict[int, tuple[str, ...]] = {}
        out = []
        for matches in raw:
            doc_out = []
            for segment, ngram, mask in matches:
                if mask not in names:
                    names[mask] = self.names_of(mask)
                doc_out.append(SegmentMatch(segment, ngram, names[mask]))
            out.append(doc_out)
        return out


def build_index(
    texts: Iterable[BenchmarkText],
    backend: Backend = "cpp",
    n: int = 10,
    min_short: int = 3,
) -> NGramMatcher:
    """An index over ``texts``: the C++ one (``"cpp"``) or the plain-Python reference."""
    if backend == "cpp":
        index: NGramMatcher = NGramIndex(n, min_short)
    elif backend == "python":
        index = ReferenceNGramIndex(n, min_short)
    else:
        raise ValueError(f"backend must be 'cpp' or 'python', got {backend!r}")
    index.add_texts(texts)
    return index


def load_benchmark_index(
    benchmarks_dir: str | Path, backend: Backend = "cpp", n: int = 10, min_short: int = 3
) -> NGramMatcher:
    """An index over every evaluation benchmark under ``benchmarks_dir``."""
    return build_index(load_benchmark_texts(benchmarks_dir), backend, n, min_short)
