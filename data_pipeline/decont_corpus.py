"""A corpus with planted benchmark text, to check and time decontamination against.

Background lines are real text: the visible text of the Common Crawl / web-page samples in
``shared/data/warc`` (English, Chinese, Russian pages) and sentences of GSM8K *train* (math
prose that is not an evaluation set). Into some documents a real benchmark text is planted,
in one of several disguises that normalisation must see through (case, curly quotes,
full-width characters, spacing, doubled ``$``, CJK punctuation) and possibly broken over
several lines. Other documents get a *near miss*: a benchmark question with every ninth word
replaced, which the rule must keep. :class:`PlantedCorpus` records which lines are planted.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from dsm_engine.data_pipeline.benchmark_texts import BenchmarkText
from dsm_engine.data_pipeline.decont_text import normalized_words

_FULLWIDTH = {
    c: chr(ord(c) + 0xFEE0)
    for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
}
_CJK_PUNCT = {
    "，": ",",
    "？": "?",
    "。": ".",
    "：": ":",
    "（": "(",
    "）": ")",
    ",": "，",
    "?": "？",
}
DISGUISES = ("as_is", "upper", "quotes", "spacing", "fullwidth", "dollars", "cjk_punct")


def disguise(text: str, how: str) -> str:
    """``text`` rewritten in a way that keeps its normalised words (checked by the tests)."""
    if how == "as_is":
        return text
    if how == "upper":
        return text.upper()
    if how == "quotes":
        return text.replace("'", "\u2019").replace('"', "\u201c")
    if how == "spacing":
        return re.sub(r"\s+", "  ", re.sub(r"([,.;:?!])", r" \1 ", text))
    if how == "fullwidth":
        return "".join(_FULLWIDTH.get(c, c) for c in text)
    if how == "dollars":
        return text.replace("$", "$$")
    if how == "cjk_punct":
        return "".join(_CJK_PUNCT.get(c, c) for c in text)
    raise ValueError(f"unknown disguise {how!r}")


def break_lines(text: str, rng: random.Random, pieces: int) -> list[str]:
    """``text`` (newlines flattened) cut at spaces into up to ``pieces`` lines."""
    tokens = text.split()
    if len(tokens) < 2 or pieces < 2:
        return [" ".join(tokens)]
    cuts = sorted(rng.sample(range(1, len(tokens)), min(pieces - 1, len(tokens) - 1)))
    bounds = [0, *cuts, len(tokens)]
    return [" ".join(tokens[a:b]) for a, b in zip(bounds, bounds[1:])]


def warc_lines(warc_dir: str | Path) -> list[str]:
    """Visible text lines of every HTML response in ``warc_dir/*.warc.gz``."""
    import lxml.html
    from lxml import etree
    from warcio.archiveiterator import ArchiveIterator

    lines: list[str] = []
    for path in sorted(Path(warc_dir).glob("*.warc.gz")):
        with open(path, "rb") as fh:
            for record in ArchiveIterator(fh):
                if record.rec_type != "response":
                    continue
                body = record.content_stream().read()
                try:
                    root = lxml.html.document_fromstring(body)
                except (etree.ParserError, ValueError):
                    continue
                for el in root.xpath("//script|//style"):
                    el.drop_tree()
                lines.extend(s for s in (x.strip() for x in root.text_content().split("\n")) if s)
    return lines


def gsm8k_train_lines(path: str | Path, limit: int = 2000) -> list[str]:
    """Sentences of GSM8K train questions and answers (not an evaluation set)."""
    lines: list[str] = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, row in enumerate(f):
            if i >= limit:
                break
            item = json.loads(row)
            lines.append(item["question"])
            lines.extend(s for s in item["answer"].split("\n") if s.strip())
    return lines


@dataclass
class PlantedCorpus:
    """Documents and, per document, the lines a correct decontamination removes."""

    docs: list[str] = field(default_factory=list)
    planted: list[set[int]] = field(default_factory=list)  # line indices per document
    planted_texts: list[BenchmarkText | None] = field(default_factory=list)
    near_misses: int = 0


def near_miss(text: str) -> str | None:
    """``text``'s normalised words with every 9th one swapped for a word no benchmark has, so
    no 10 benchmark words stay consecutive; None when ``text`` has fewer than 20 words."""
    ws = normalized_words(text)
    if len(ws) < 20:
        return None
    return " ".join("zqxjv" if i % 9 == 8 else w for i, w in enumerate(ws))


def build_planted_corpus(
    background: list[str],
    benchmark_texts: list[BenchmarkText],
    num_docs: int,
    *,
    seed: int = 0,
    planted_fraction: float = 0.2,
    near_miss_fraction: float = 0.1,
    lines_per_doc: tuple[int, int] = (3, 20),
) -> PlantedCorpus:
    """``num_docs`` documents of background lines, some with a planted benchmark text."""
    rng = random.Random(seed)

    def pick() -> BenchmarkText:  # a text the rule applies to (>= 3 words)
        while True:
            text = rng.choice(benchmark_texts)
            if len(normalized_words(text.text)) >= 3:
                return text

    corpus = PlantedCorpus()
    for _ in range(num_docs):
        lines = [rng.choice(background) for _ in range(rng.randint(*lines_per_doc))]
        planted: set[int] = set()
        source = None
        roll = rng.random()
        if roll < planted_fraction:
            source = pick()
            how = rng.choice(DISGUISES)
            pieces = rng.choice((1, 1, 2, 3))
            block = break_lines(disguise(source.text, how), rng, pieces)
            at = rng.randint(0, len(lines))
            lines[at:at] = block
            # a hit spans its first to its last word's line: pieces left with punctuation only
            # go when inside the block, and stay at its ends
            worded = [i for i, line in enumerate(block) if normalized_words(line)]
            planted = set(range(at + worded[0], at + worded[-1] + 1))
        elif roll < planted_fraction + near_miss_fraction:
            miss = near_miss(pick().text)
            if miss is not None:
                lines.insert(rng.randint(0, len(lines)), miss)
                corpus.near_misses += 1
        corpus.docs.append("\n".join(lines))
        corpus.planted.append(planted)
        corpus.planted_texts.append(source)
    return corpus
