"""Decontamination matchers: normalisation, the paper's rule, and C++ == plain-Python reference."""

from __future__ import annotations

import random

import pytest

from dsm_engine.data_pipeline import decont_corpus as dc
from dsm_engine.data_pipeline.benchmark_texts import BenchmarkText, load_benchmark_texts
from dsm_engine.data_pipeline.decont_text import normalized_words
from dsm_engine.data_pipeline.ngram_index import build_index
from dsm_engine.data_pipeline.ngram_ref import ReferenceNGramIndex


@pytest.fixture(scope="module")
def bench_texts(shared_data):
    return load_benchmark_texts(shared_data / "benchmarks")


@pytest.fixture(scope="module")
def full_cpp_index(bench_texts):
    return build_index(bench_texts, "cpp")


@pytest.fixture(scope="module")
def background(shared_data, full_cpp_index):
    """Real web and GSM8K-train lines that the rule leaves alone on their own."""
    lines = dc.warc_lines(shared_data / "warc") + dc.gsm8k_train_lines(
        shared_data / "benchmarks" / "gsm8k" / "train.jsonl", limit=1500
    )
    flags = full_cpp_index.query(lines)
    clean = [line for line, hit in zip(lines, flags) if not hit]
    # a few GSM8K-train lines share a generic 10-gram with GSM8K test ("by the number of
    # months in a year to find"): the rule removes those, so they cannot serve as background
    assert len(lines) - len(clean) < 0.01 * len(lines)
    return clean


@pytest.fixture(scope="module")
def subset_texts(bench_texts):
    """Every benchmark's first items plus every 3-9 word text: small enough for the reference."""
    return [t for t in bench_texts if t.item < 60 or 3 <= len(normalized_words(t.text)) < 10]


def both(texts):
    return build_index(texts, "cpp"), build_index(texts, "python")


# --------------------------------------------------------------------------- normalisation
def test_normalisation_folds_case_punctuation_width_and_splits_cjk():
    assert (
        normalized_words("Janet’s ducks")
        == normalized_words("JANET'S  ducks")
        == [
            "janet",
            "s",
            "ducks",
        ]
    )
    assert normalized_words("$\\frac{1}{2}$ ＡＢＣ１２") == ["frac", "1", "2", "abc12"]
    assert normalized_words("妈咪买了3盒茶叶，一盒") == [
        "妈",
        "咪",
        "买",
        "了",
        "3",
        "盒",
        "茶",
        "叶",
        "一",
        "盒",
    ]
    assert normalized_words("x² café") == ["x2", "café"]


@pytest.mark.parametrize("how", dc.DISGUISES)
def test_disguises_keep_normalised_words(bench_texts, how):
    for t in bench_texts[::97]:
        assert normalized_words(dc.disguise(t.text, how)) == normalized_words(t.text)


# --------------------------------------------------------------------------- the rule
def _texts(*pairs):
    return [BenchmarkText(name, i, "question", text) for i, (name, text) in enumerate(pairs)]


LONG = "Natalia sold clips to forty eight of her friends in April and then half as many in May"


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_ten_gram_anywhere_removes_its_line_only(backend):
    index = build_index(_texts(("toy", LONG)), backend)
    doc = "intro\nAs we know, natalia SOLD clips to forty-eight of her friends in April.\noutro"
    (match,) = index.query([doc])[0]
    assert match.segment == 1
    assert match.ngram == "natalia sold clips to forty eight of her friends in"
    assert match.benchmarks == ("toy",)
    # nine consecutive benchmark words are not enough
    assert index.query(["natalia sold clips to forty eight of her friends"]) == [[]]


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_short_texts_match_exactly_and_under_three_words_never(backend):
    index = build_index(
        _texts(("a", "Compute $\\cos 315^\\circ$."), ("b", "Evaluate x"), ("b", "42")), backend
    )
    hits = index.query(["so compute cos 315 circ now", "compute cos 315", "evaluate x", "42"])
    assert [[m.segment for m in doc] for doc in hits] == [[0], [], [], []]
    assert hits[0][0].ngram == "compute cos 315 circ"


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_benchmark_text_broken_over_lines_removes_every_line_it_spans(backend):
    index = build_index(_texts(("toy", LONG)), backend)
    doc = "keep\nNatalia sold clips to\n$$ + $$\nforty eight of her friends in April and then\nhalf\nkeep"
    # the word-less line inside the text goes too: a hit spans its first to its last word
    assert [m.segment for m in index.query([doc])[0]] == [1, 2, 3, 4]
    # a foreign word ("48") breaks the sequence: only the 10 words after it still match
    doc = "keep\nNatalia sold clips to 48\nforty eight of her friends in April and then\nhalf\nkeep"
    assert [m.segment for m in index.query([doc])[0]] == [2, 3]


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_match_names_every_benchmark_holding_the_ngram(bench_texts, backend):
    # MATH-500 is a subset of MATH test: its problems are in both
    problem = next(t for t in bench_texts if t.benchmark == "math500" and t.field == "question")
    texts = [t for t in bench_texts if t.text == problem.text]
    index = build_index(texts, backend)
    (match,) = index.query([problem.text])[0]
    assert set(match.benchmarks) == {"math", "math500"}


def test_index_sizes_agree(subset_texts):
    cpp, ref = both(subset_texts)
    assert cpp.num_keys == ref.num_keys > 10_000
    assert cpp.benchmark_names == ref.benchmark_names


# --------------------------------------------------------------------------- C++ == reference
def test_cpp_equals_reference_on_planted_corpus(subset_texts, background):
    cpp, ref = both(subset_texts)
    corpus = dc.build_planted_corpus(background, subset_texts, 1500, seed=3, planted_fraction=0.3)
    assert cpp.query(corpus.docs) == ref.query(corpus.docs)


def test_cpp_equals_reference_on_mutated_benchmark_text(subset_texts):
    """Adversarial: benchmark words shuffled, cut, duplicated and re-lined at random."""
    cpp, ref = both(subset_texts)
    rng = random.Random(7)
    pool = [normalized_words(t.text) for t in subset_texts]
    docs = []
    for _ in range(600):
        words: list[str] = []
        for _ in range(rng.randint(1, 4)):
            ws = rng.choice(pool)
            a = rng.randrange(len(ws))
            words += ws[a : a + rng.randint(1, 25)]
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words) + 1), rng.choice(["the", "x", "2", "乘"]))
        seps = [rng.choice([" ", " ", " ", "\n", ", ", "\n\n"]) for _ in words]
        docs.append("".join(w + s for w, s in zip(words, seps)))
    docs += ["", "\n\n", "only separators ... !!!", "\ud800 lone surrogate"]
    got, want = cpp.query(docs), ref.query(docs)
    assert got == want
    assert sum(map(len, want)) > 200  # the corpus does exercise matches


# --------------------------------------------------------------------------- ground truth
def test_every_planted_benchmark_text_is_removed_and_nothing_else(
    bench_texts, full_cpp_index, background
):
    corpus = dc.build_planted_corpus(background, bench_texts, 2500, seed=11)
    assert sum(1 for p in corpus.planted if p) > 400 and corpus.near_misses > 150
    planted_benchmarks = {t.benchmark for t in corpus.planted_texts if t is not None}
    assert {"gsm8k", "math", "cmath", "mgsm_zh", "agieval-gaokao-mathqa"} <= planted_benchmarks
    short = [
        t for t in corpus.planted_texts if t is not None and len(normalized_words(t.text)) < 10
    ]
    assert short, "some planted texts are 3-9 word benchmark texts"
    results = full_cpp_index.query(corpus.docs)
    for doc_id, (matches, planted, source) in enumerate(
        zip(results, corpus.planted, corpus.planted_texts)
    ):
        assert {m.segment for m in matches} == planted, (doc_id, source)
        for m in matches:
            assert source.benchmark in m.benchmarks


def test_reference_agrees_on_a_sample_of_the_full_index(bench_texts, full_cpp_index, background):
    ref = ReferenceNGramIndex()
    ref.add_texts(bench_texts)
    corpus = dc.build_planted_corpus(background, bench_texts, 300, seed=5, planted_fraction=0.5)
    assert full_cpp_index.query(corpus.docs) == ref.query(corpus.docs)
