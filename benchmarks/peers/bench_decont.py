"""Benchmark decontamination against datatrove's n-gram decontamination: documents/s/core and
agreement on which documents are contaminated.

Both see the same benchmark texts (every question and answer of the shipped evaluation sets,
``load_benchmark_texts``) and the same corpus: ``decont_corpus.build_planted_corpus`` (real
WARC lines and GSM8K train lines, 20% of documents with a planted benchmark text, disguised
by case, punctuation and line breaks; 10% with a near miss that keeps no 10 benchmark words
in a row).

* ours: the C++ index (``ngram_index.build_index(texts, "cpp")``), DeepSeekMath's rule: a line
  is contaminated when it holds part of a benchmark 10-gram; texts of 3-9 words match whole.
* datatrove: ``NGramsDecontFilter`` with ``NGramsDecontConfig(n_grams=10)``; its index holds
  the hashes ``NGramsDecontIndexer.compute_hashes`` gives for each text (called on a stand-in
  ``self``: the indexer's constructor insists on lighteval, which only fetches hub tasks).
  It drops a whole document on its first matching 10-gram; texts under 10 words give none.

A document counts as removed by ours when any of its lines is. Speed is documents per
CPU-second (one thread each), the median of ``--repeats`` passes.

    python -P benchmarks/peers/bench_decont.py [--docs 3000] [--repeats 3] [--texts N]

``--texts N`` indexes a fixed random sample of N benchmark texts instead of all of them (smoke
runs: building datatrove's index tokenises every text with spaCy, twice).

Writes ``benchmarks/results/decont_peers.{json,md}``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from common import RESULTS, run_info, write_results  # noqa: E402

SHARED = BENCH.parent.parent / "shared" / "data"
N = 10
PACKAGES = ("dsm-engine", "datatrove", "spacy", "numpy")


def datatrove_filter(texts, index_dir: Path, *, norm_numbers: bool = True):
    """datatrove's n-gram filter over an index of ``texts`` written to ``index_dir``
    (``norm_numbers``: its default of writing every number as 0)."""
    import numpy as np
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.pipeline.decont.n_grams import NGramsDecontIndexer
    from datatrove.utils.hashing import create_hash_func
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    config = NGramsDecontConfig(n_grams=N, norm_config=TextNormConfig(norm_numbers=norm_numbers))
    indexer = SimpleNamespace(
        tokenizer=load_word_tokenizer("eng"),
        config=config,
        hash_func=create_hash_func(config.hash_config),
    )
    by_task: dict[str, set[int]] = {}
    for t in texts:
        hashes = NGramsDecontIndexer.compute_hashes(indexer, t.text)
        by_task.setdefault(t.benchmark, set()).update(hashes)
    for task, hashes in by_task.items():
        array = np.array(sorted(hashes), dtype=config.hash_config.np_descr)
        array.tofile(index_dir / f"{task}.index.hashes")
    filt = NGramsDecontFilter(index_folder=str(index_dir), config=config)
    filt.load_index_hashes()
    return filt


def _cpu_median(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        tic = time.process_time()
        out = fn()
        times.append(time.process_time() - tic)
    return statistics.median(times), out


def run(num_docs: int, repeats: int, out_dir: Path, *, num_texts: int | None = None) -> Path:
    """Both decontaminators on ``num_docs`` planted documents; ``num_texts``: index a seeded
    sample of that many benchmark texts (``None``: every text)."""
    from datatrove.data import Document

    from dsm_engine.data_pipeline import decont_corpus as dc
    from dsm_engine.data_pipeline.benchmark_texts import load_benchmark_texts
    from dsm_engine.data_pipeline.ngram_index import build_index

    env = run_info(PACKAGES)
    texts = load_benchmark_texts(SHARED / "benchmarks")
    if num_texts is not None and num_texts < len(texts):
        keep = sorted(random.Random(0).sample(range(len(texts)), num_texts))
        texts = [texts[i] for i in keep]
    background = dc.warc_lines(SHARED / "warc") + dc.gsm8k_train_lines(
        SHARED / "benchmarks" / "gsm8k" / "train.jsonl"
    )
    corpus = dc.build_planted_corpus(background, texts, num_docs, seed=0)
    build_ours, index = _cpu_median(lambda: build_index(texts, "cpp", n=N), 1)
    t_ours, matches = _cpu_median(lambda: index.query(corpus.docs), repeats)
    ours = [bool(m) for m in matches]
    planted = [bool(p) for p in corpus.planted]

    def row(name: str, seconds: float, build: float, flags: list[bool]) -> dict:
        hit = sum(f and p for f, p in zip(flags, planted))
        return {
            "decontaminator": name,
            "docs/s/core": round(num_docs / seconds, 1),
            "index build s": round(build, 2),
            "docs removed": sum(flags),
            "planted docs caught": f"{hit}/{sum(planted)}",
            "clean docs removed": sum(f and not p for f, p in zip(flags, planted)),
        }

    rows = [row("ours (C++ index, 10-gram lines)", t_ours, build_ours, ours)]
    docs = [Document(text=d, id=str(i)) for i, d in enumerate(corpus.docs)]
    flags = {}
    for norm_numbers in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.process_time()
            filt = datatrove_filter(texts, Path(tmp), norm_numbers=norm_numbers)
            build_dt = time.process_time() - tic
            t_dt, kept = _cpu_median(lambda f=filt: [f.filter(d) for d in docs], repeats)
        flags[norm_numbers] = [k is not True for k in kept]
        name = "datatrove NGramsDecontFilter (n=10" + (
            ")" if norm_numbers else ", norm_numbers=False)"
        )
        rows.append(row(name, t_dt, build_dt, flags[norm_numbers]))
    theirs = flags[True]
    both = sum(a and b for a, b in zip(ours, theirs))
    only_ours = sum(a and not b for a, b in zip(ours, theirs))
    only_dt = sum(b and not a for a, b in zip(ours, theirs))
    short = [
        t for t, p in zip(corpus.planted_texts, planted) if p and t and len(t.text.split()) < N
    ]
    env["load_avg_after"] = run_info()["load_avg_1m_5m_15m"]
    notes = [
        f"{num_docs} documents ({sum(map(len, corpus.docs)) / 1e6:.2f} MB), {sum(planted)} with "
        f"a planted benchmark text, {corpus.near_misses} with a near miss; {len(texts):,} "
        "benchmark texts.",
        f"agreement on removed documents: both {both}, only ours {only_ours}, only datatrove "
        f"{only_dt}, neither {num_docs - both - only_ours - only_dt} "
        f"({100 * (num_docs - only_ours - only_dt) / num_docs:.1f}% agree); with "
        "norm_numbers=False: "
        f"{100 * sum(a == b for a, b in zip(ours, flags[False])) / num_docs:.1f}% agree.",
        "datatrove's default normalisation writes every number as 0, so worked solutions share "
        "10-grams such as 'a total of 0 0 0 0 0 0 0' with the benchmarks: its clean-document "
        "removals are those.",
        f"{len(short)} planted texts have fewer than {N} words: only ours can catch them.",
        "docs/s/core = documents per CPU-second, median of "
        f"{repeats} passes; index build = CPU-seconds, once. Ours removes lines and keeps the "
        "rest of a document; datatrove drops the whole document.",
    ]
    return write_results("decont_peers", rows, env, notes, out_dir=out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--texts", type=int, default=None, help="index a sample of N benchmark texts")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.docs < 1 or args.repeats < 1 or (args.texts is not None and args.texts < 1):
        p.error("--docs, --repeats and --texts must be positive")
    run(args.docs, args.repeats, Path(args.out), num_texts=args.texts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
