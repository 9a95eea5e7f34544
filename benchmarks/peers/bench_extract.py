"""HTML -> text extraction against its peers: pages/s/core and the math that survives.

Extractors, each run on the same decoded HTML strings in this one process:

* ``ours``: ``dsm_engine.data_pipeline.extract.extract_text`` (formulas rewritten in the tree,
  then resiliparse's main-content extraction);
* ``resiliparse``: ``extract_plain_text(html, main_content=True, preserve_formatting=True)``;
* ``trafilatura``: ``trafilatura.extract(html)`` (its defaults, with the readability/jusText
  fallback) and ``trafilatura fast``: ``extract(html, no_fallback=True)``.

Page sets: the responses of the shipped WARC samples (``shared/data/warc``: real pages, few with
math) and the labelled math pages of ``math_pages.py`` (MATH problems and generated formulas
in seven markup styles, formulas known). Speed is pages per CPU-second of this process
(``time.process_time``: one core, and less disturbed by other work on a shared machine than
wall time), the median of ``--repeats`` passes, the extractors interleaved in each pass.

    python -P benchmarks/peers/bench_extract.py [--per-style 20] [--repeats 5]

Writes ``benchmarks/results/extract_peers.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "peers"))
from common import RESULTS, run_info, write_results  # noqa: E402
from math_pages import STYLES, TEX_STYLES, LabelledPage, build_pages, scored, survived  # noqa: E402

SHARED = BENCH.parent.parent / "shared" / "data"
PACKAGES = ("dsm-engine", "resiliparse", "trafilatura", "lxml", "lxml-html-clean")


def extractors() -> dict[str, Callable[[str], str]]:
    """Name -> ``html -> text`` for every extractor that is installed."""
    from resiliparse.extract.html2text import extract_plain_text

    from dsm_engine.data_pipeline.extract import extract_text

    out = {
        "ours": lambda h: extract_text(h).text,
        "resiliparse": lambda h: extract_plain_text(h, main_content=True, preserve_formatting=True),
    }
    try:
        import trafilatura
    except ImportError:  # the bench extra is not installed
        return out
    out["trafilatura"] = lambda h: trafilatura.extract(h) or ""
    out["trafilatura fast"] = lambda h: trafilatura.extract(h, no_fallback=True) or ""
    return out


def warc_pages(folder: Path) -> list[str]:
    """The HTML of every response record in the ``*.warc.gz`` files of ``folder``."""
    from warcio.archiveiterator import ArchiveIterator

    pages = []
    for path in sorted(folder.glob("*.warc.gz")):
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type == "response":
                    pages.append(rec.content_stream().read().decode("utf-8", "replace"))
    if not pages:
        raise SystemExit(f"no WARC response records under {folder}")
    return pages


def _speed(fns: dict[str, Callable[[str], str]], pages: list[str], repeats: int) -> dict:
    """Pages per CPU-second and per wall-second of each extractor (medians over passes)."""
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: load changes hit every extractor alike
            t0, c0 = time.perf_counter(), time.process_time()
            for page in pages:
                fn(page)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    return {
        k: (len(pages) / statistics.median(cpu[k]), len(pages) / statistics.median(wall[k]))
        for k in fns
    }


def _math_kept(fn: Callable[[str], str], pages: list[LabelledPage]) -> dict[str, tuple[int, int]]:
    """Per style: (formulas surviving, formulas scored)."""
    kept: dict[str, tuple[int, int]] = {s: (0, 0) for s in STYLES}
    for page in pages:
        want = scored(page.formulas)
        got = survived(want, fn(page.html))
        k, n = kept[page.style]
        kept[page.style] = (k + got, n + len(want))
    return kept


def _pct(pairs: list[tuple[int, int]]) -> float:
    k, n = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return round(100 * k / n, 1) if n else float("nan")


def run(per_style: int, repeats: int, out_dir: Path) -> Path:
    fns = extractors()
    warc = warc_pages(SHARED / "warc")
    labelled = build_pages(SHARED / "benchmarks" / "math" / "test.jsonl", per_style=per_style)
    env = run_info(PACKAGES)
    for fn in fns.values():  # warm-up: imports, caches
        fn(warc[0])
    warc_speed = _speed(fns, warc, repeats)
    math_speed = _speed(fns, [p.html for p in labelled], repeats)
    rows = []
    for name, fn in fns.items():
        kept = _math_kept(fn, labelled)
        row = {
            "extractor": name,
            "WARC pages/s/core": round(warc_speed[name][0], 1),
            "math pages/s/core": round(math_speed[name][0], 1),
            "WARC pages/s (wall)": round(warc_speed[name][1], 1),
            "math kept %": _pct(list(kept.values())),
            "TeX-source styles %": _pct([kept[s] for s in TEX_STYLES]),
            "MathML-only styles %": _pct([kept[s] for s in STYLES if s not in TEX_STYLES]),
        }
        row.update({f"{s} %": _pct([kept[s]]) for s in STYLES})
        rows.append(row)
    scored_n = sum(len(scored(p.formulas)) for p in labelled)
    env["load_avg_after"] = run_info()["load_avg_1m_5m_15m"]
    notes = [
        f"{len(warc)} WARC responses ({sum(map(len, warc)) / 1e6:.2f} MB of HTML); "
        f"{len(labelled)} labelled math pages ({per_style} per style, {scored_n} formulas "
        "scored); medians of "
        f"{repeats} passes, extractors interleaved; one process, one thread.",
        "pages/s/core = pages per CPU-second of the process; wall-clock pages/s depend on the "
        "machine's load (recorded above, before and after).",
        "A formula survives when its LaTeX (whitespace removed) occurs in the extracted text. "
        "MathML-only styles carry no TeX: text extractors give the rendered symbols, which do "
        "not count.",
    ]
    return write_results("extract_peers", rows, env, notes, out_dir=out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-style", type=int, default=20, help="labelled pages per markup style")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.per_style < 1 or args.repeats < 1:
        p.error("--per-style and --repeats must be positive")
    run(args.per_style, args.repeats, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
