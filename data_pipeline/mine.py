"""The mining driver (stage 7): ``dsm data mine --warc GLOB --seed SEED.jsonl --out DIR``.

Builds the pool once (stages 1-4, ``pool.py``), then iterates (DeepSeekMath §2.1):
train the classifier on seed positives + random pool negatives, score the pool, keep the top
pages, report math domains and candidate paths, add uncollected pages under annotated paths to
the seed; stop after ``iterations`` or when at least ``stop_overlap`` (98%) of this iteration's
collection was already collected in the previous one. Each iteration's classifier, scores,
domain report, path candidates, seed additions and stats live in ``DIR/iter_<k>/``.

Outputs: ``DIR/mined.jsonl`` (kept pages, best first: ``{"id", "text", "metadata"}`` with url,
domain, date, language, math_score), ``DIR/funnel.json`` (pages in and kept per stage, skips by
reason); the command (``dsm_engine.commands.data_mine``) prints the funnel in two lines.

Bad input fails first, in one line (exit 2): a matched file that is not a WARC (empty, JSON,
...), a bad seed line (unless ``--skip-bad-lines``), a pool with no page, or a classifier whose
own seed pages score below the keep threshold (the paper's 3 epochs on a few hundred seed pages)
with the settings to change. An empty corpus is reported loudly with exit status 1.

Resume: run the same command again. Stages skip their completed tasks (datatrove completion
markers); driver steps write their results atomically and are skipped when present; a killed
run therefore finishes with the same output as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.logging import logger

from dsm_engine.jsonl import SKIP_HINT, BadLines, iter_jsonl

from .classifier import (
    ClassifierConfig,
    MathScorer,
    keep_rule_problem,
    select_top,
    train_classifier,
)
from .domains import (
    PageRow,
    auto_annotations,
    domain_report,
    propose_paths,
    read_annotations,
    seed_additions,
    write_domain_report,
    write_path_candidates,
)
from .executors import ExecutorConfig, run_stage
from .jsonl_io import iter_records
from .near_dedup import MinHashParams
from .pool import RANK_FILE, IdFilter, RankFileReader, build_pool, split_glob
from .warc import warc_file_problem


@dataclass
class MineConfig:
    """Everything ``dsm data mine`` reads (YAML via ``--config``, ``key=value`` overrides)."""

    warc: str = ""  # glob of WARC/WET files
    seed: str = ""  # JSONL of seed math documents ({"text": ...} per line)
    out: str = ""  # output folder (also the resume state)
    iterations: int = 4
    tasks: int = 0  # tasks per stage; 0: one per WARC file, at most max_tasks
    max_tasks: int = 64
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    lang_min_score: float = 0.5
    max_page_bytes: int = 2_000_000
    max_link_density: float = 0.5
    minhash: MinHashParams = field(default_factory=MinHashParams)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    domain_threshold: float = 0.10  # a domain is math-related above this collected fraction
    domain_min_pages: int = 1
    path_depth: int = 2  # path segments of proposed prefixes
    annotations: str = ""  # file of annotated math paths (the human step); "" for none
    auto_annotate: float = 0.0  # > 0: also accept proposed paths with collected fraction >= this
    stop_overlap: float = 0.98
    skip_bad_lines: bool = False  # skip (and count) seed lines that are not {"text": str} JSON
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


@dataclass
class MineResult:
    """Where the mined corpus is and how much each stage kept."""

    mined: Path  # DIR/mined.jsonl
    funnel: dict
    out: Path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> Iterator[dict]:
    return (row for _, row in iter_jsonl(path))


def _pool_docs(pool: Path) -> Iterator[dict]:
    for path in sorted((pool / "docs").glob("*.jsonl.gz")):
        yield from _read_jsonl(path)


def _read_seed(path: str, bad: BadLines) -> list[str]:
    p = Path(path)
    if not path or not p.is_file():
        raise FileNotFoundError(f"--seed {path or '(missing)'}: seed file not found")
    texts = [row["text"] for _, _, row in iter_records([p], "text", bad)]
    if not texts:
        raise ValueError(f"--seed {p}: no documents")
    return texts


def _check_warc_files(pattern: str, files: list[str]) -> None:
    """Fail before any work when a file the glob matched is not a WARC (empty, JSON, ...)."""
    bad = [(f, why) for f in files if (why := warc_file_problem(f))]
    if bad:
        named = "; ".join(f"{f}: {why}" for f, why in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"--warc {pattern}: {len(bad)} of {len(files)} matching files are not WARC/WET "
            f"files ({named}{more}); narrow the glob or remove them"
        )


def sample_negatives(pool: Path, n: int, salt: str, exclude: set[str]) -> list[str]:
    """``n`` pool texts chosen uniformly by a salted hash of their id (reproducible)."""

    def key(doc: dict) -> str:
        return hashlib.sha1(f"{salt}:{doc['id']}".encode()).hexdigest()

    docs = (d for d in _pool_docs(pool) if d["id"] not in exclude)
    return [d["text"] for d in heapq.nsmallest(n, docs, key=key)]


def _score_row(self, doc) -> dict:
    """Scores file line: what ranking and domain discovery need, not the text."""
    m = doc.metadata
    return {
        "id": doc.id,
        "url": m.get("url", ""),
        "domain": m.get("domain", ""),
        "score": m["math_score"],
        "n_tokens": m["n_tokens"],
    }


class _Progress:
    """Rich progress over iterations with the current stage as its description."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} iterations"),
                TimeElapsedColumn(),
            )
            self.task = self.bar.add_task("mining", total=total)

    def __enter__(self):
        if self.enabled:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()

    def stage(self, name: str) -> None:
        if self.enabled:
            self.bar.update(self.task, description=f"[bold]{name}")

    def advance(self, message: str) -> None:
        if self.enabled:
            self.bar.advance(self.task)
            self.bar.console.print(message)


def _check_config(cfg: MineConfig, out: Path) -> None:
    from dsm_engine.config import save_config, to_dict

    saved = out / "config.yaml"
    # where stages run, and skipping bad seed lines (a run that met one without it failed),
    # do not change what is mined
    ignored = ("executor", "skip_bad_lines")
    mine = {k: v for k, v in to_dict(cfg).items() if k not in ignored}
    if saved.is_file():
        import yaml

        before = {
            k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items() if k not in ignored
        }
        diff = sorted(k for k in set(before) | set(mine) if before.get(k) != mine.get(k))
        if diff:
            raise ValueError(
                f"{saved}: {out} was mined with another config (differs in {', '.join(diff)}); use a new --out"
            )
        return
    save_config(cfg, saved)


def _iteration(
    cfg: MineConfig,
    k: int,
    pool: Path,
    out: Path,
    tasks: int,
    seed_texts: list[str],
    prev: set[str] | None,
    prog: _Progress,
) -> dict:
    """Run (or finish) iteration ``k``; return its summary (also written to ``iter_k/stats.json``)."""
    it = out / f"iter_{k}"
    it.mkdir(parents=True, exist_ok=True)
    added = [
        row for j in range(1, k) for row in _read_jsonl(out / f"iter_{j}" / "seed_added.jsonl")
    ]
    positive_ids = {row["id"] for row in added}
    positives = seed_texts + [row["text"] for row in added]
    n_neg = max(1, round(len(positives) * cfg.classifier.negatives_per_positive))
    model = it / "classifier.bin"
    if not model.is_file():
        prog.stage(f"iteration {k}: train classifier")
        negatives = sample_negatives(pool, n_neg, f"{cfg.classifier.seed}:{k}", positive_ids)
        train_classifier(positives, negatives, model, cfg.classifier)
        if problem := keep_rule_problem(
            model, seed_texts, cfg.classifier, len(positives) + len(negatives)
        ):
            model.unlink()  # a rerun must not trust it
            raise ValueError(f"iteration {k}: {problem}")
    prog.stage(f"iteration {k}: score pool")
    scorer = [
        RankFileReader(str(pool / "docs")),
        MathScorer(str(model), cfg.classifier.max_words),
        JsonlWriter(str(it / "scores"), output_filename=RANK_FILE, adapter=_score_row),
    ]
    run_stage(
        f"score-{k}", scorer, tasks=tasks, logging_dir=it / "logs" / "score", cfg=cfg.executor
    )
    rows = [r for p in sorted((it / "scores").glob("*.jsonl.gz")) for r in _read_jsonl(p)]
    prog.stage(f"iteration {k}: rank and keep")
    collected = select_top(
        ((r["id"], r["score"], r["n_tokens"]) for r in rows),
        cfg.classifier.threshold,
        cfg.classifier.token_budget,
    )
    _atomic_write(it / "collected_ids.txt", "\n".join(sorted(collected)))
    kept = set(collected)
    pages = [PageRow(r["id"], r["url"], r["domain"], r["id"] in kept) for r in rows]
    prog.stage(f"iteration {k}: domain discovery")
    report = domain_report(pages, cfg.domain_threshold, cfg.domain_min_pages)
    write_domain_report(report, it)
    cands = propose_paths(pages, [d["domain"] for d in report["math_domains"]], cfg.path_depth)
    write_path_candidates(cands, it)
    prefixes = read_annotations(cfg.annotations) if cfg.annotations else []
    if cfg.auto_annotate > 0:
        prefixes += auto_annotations(cands, cfg.auto_annotate)
    _atomic_write(it / "annotations_used.txt", "\n".join(prefixes) + "\n")
    new_ids = set(seed_additions(pages, prefixes)) - positive_ids
    new_rows = sorted(
        ({"id": d["id"], "text": d["text"]} for d in _pool_docs(pool) if d["id"] in new_ids),
        key=lambda r: r["id"],
    )
    _atomic_write(it / "seed_added.jsonl", "".join(json.dumps(r) + "\n" for r in new_rows))
    overlap = len(kept & prev) / len(kept) if prev is not None and kept else None
    summary = {
        "iteration": k,
        "positives": len(positives),
        "negatives": n_neg,
        "scored": len(rows),
        "top_score": max((r["score"] for r in rows), default=None),
        "collected": len(kept),
        "collected_tokens": sum(r["n_tokens"] for r in rows if r["id"] in kept),
        "overlap_with_previous": None if overlap is None else round(overlap, 6),
        "math_domains": len(report["math_domains"]),
        "annotated_prefixes": len(prefixes),
        "seed_added": len(new_rows),
        "stopped": overlap is not None and overlap >= cfg.stop_overlap,
    }
    _atomic_write(it / "stats.json", json.dumps(summary, indent=1))
    return summary


def _write_mined(cfg: MineConfig, k: int, pool: Path, out: Path, tasks: int) -> int:
    """Kept pages of iteration ``k`` with their scores -> ``mined/`` shards and ``mined.jsonl``."""
    it = out / f"iter_{k}"
    pipeline = [
        RankFileReader(str(pool / "docs")),
        IdFilter(str(it / "collected_ids.txt")),
        MathScorer(str(it / "classifier.bin"), cfg.classifier.max_words),
        JsonlWriter(str(out / "mined"), output_filename=RANK_FILE),
    ]
    run_stage(
        "write-mined",
        pipeline,
        tasks=tasks,
        logging_dir=out / "logs" / f"mined_{k}",
        cfg=cfg.executor,
    )
    docs = [d for p in sorted((out / "mined").glob("*.jsonl.gz")) for d in _read_jsonl(p)]
    docs.sort(key=lambda d: (-d["metadata"]["math_score"], d["id"]))
    _atomic_write(
        out / "mined.jsonl",
        "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in docs),
    )
    return len(docs)


def mine_corpus(cfg: MineConfig, *, progress: bool = True) -> MineResult:
    """Mine math pages from ``cfg.warc`` starting from ``cfg.seed`` into ``cfg.out``.

    Raises FileNotFoundError naming ``--warc``/``--seed`` when they match nothing, ValueError
    for bad values. Returns the path of ``mined.jsonl`` and the funnel.
    """
    if not cfg.out:
        raise ValueError("--out is required")
    if cfg.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {cfg.iterations}")
    _, _, files = split_glob(cfg.warc)
    _check_warc_files(cfg.warc, files)
    bad_seed = BadLines(skip=cfg.skip_bad_lines, hint=SKIP_HINT)
    seed_texts = _read_seed(cfg.seed, bad_seed)
    if bad_seed.count:
        logger.warning(f"--seed {cfg.seed}: {bad_seed.summary()}")
    if cfg.annotations:
        read_annotations(cfg.annotations)  # fail now, not after hours of work
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(cfg, out)
    tasks = cfg.tasks or min(len(files), cfg.max_tasks)
    pool = out / "pool"
    history: list[dict] = []
    with _Progress(cfg.iterations, progress) as prog:
        funnel = build_pool(
            cfg.warc,
            pool,
            tasks=tasks,
            executor=cfg.executor,
            languages=tuple(cfg.languages),
            lang_min_score=cfg.lang_min_score,
            max_page_bytes=cfg.max_page_bytes,
            max_link_density=cfg.max_link_density,
            minhash=cfg.minhash,
            on_stage=lambda s: prog.stage(f"pool: {s}"),
        )
        funnel["seed_bad_lines"] = bad_seed.count
        if not funnel["near_dedup_kept"]:
            raise ValueError(
                f"--warc {cfg.warc}: no page reached the pool, so there is nothing to mine "
                f"({funnel_summary(funnel, cfg)})"
            )
        prev: set[str] | None = None
        for k in range(1, cfg.iterations + 1):
            done = out / f"iter_{k}" / "stats.json"
            summary = json.loads(done.read_text()) if done.is_file() else None
            if summary is None:
                summary = _iteration(cfg, k, pool, out, tasks, seed_texts, prev, prog)
            history.append(summary)
            prev = set((out / f"iter_{k}" / "collected_ids.txt").read_text().split("\n")) - {""}
            prog.advance(
                f"iteration {k}: collected {summary['collected']} of {summary['scored']} pages, "
                f"overlap {summary['overlap_with_previous']}, {summary['seed_added']} added to the seed"
            )
            if summary["stopped"]:
                break
        prog.stage("writing mined.jsonl")
        kept = _write_mined(cfg, history[-1]["iteration"], pool, out, tasks)
    funnel |= {
        "iterations": history,
        "iterations_run": len(history),
        "stopped_early": bool(history[-1]["stopped"]),
        "kept": kept,
    }
    _atomic_write(out / "funnel.json", json.dumps(funnel, indent=1))
    return MineResult(out / "mined.jsonl", funnel, out)


_SKIP_LABELS = {
    "skipped_non_html": "non-HTML",
    "skipped_status": "non-2xx status",
    "empty_page": "empty",
    "bad_encoding": "undecodable",
    "warc_truncated_record": "truncated WARC records",
    "warc_corrupt_record": "corrupt WARC records",
    "empty_after_extraction": "empty after extraction",
    "extract_error": "extraction errors",
    "language_dropped": "other languages",
}


def funnel_summary(funnel: dict, cfg: MineConfig) -> str:
    """The funnel in two or three lines: pages kept per stage, then every nonzero skip."""
    f = funnel
    stages = [
        f"{f['warc_records']} WARC records",
        f"{f['pages_in']} pages",
        f"{f['html_pages']} HTML",
        f"{f['extracted']} extracted",
        f"{f['language_kept']} {'/'.join(cfg.languages)}",
        f"{f['url_dedup_kept']} URL-unique",
        f"{f['near_dedup_kept']} near-unique (the pool)",
    ]
    if "kept" in f:
        stages.append(f"{f['kept']} kept after {f['iterations_run']} iteration(s)")
    lines = ["funnel: " + " -> ".join(stages)]
    skips = []
    for key, label in _SKIP_LABELS.items():
        if n := f["skipped"].get(key, 0):
            skips.append(f"{n} {label}")
            if key == "warc_truncated_record" and f.get("record_defects"):
                why = ", ".join(
                    f"{k.removeprefix('warc_truncated_')} {v}"
                    for k, v in f["record_defects"].items()
                    if k.startswith("warc_truncated_")
                )
                skips[-1] += f" ({why})"
    if f.get("truncated_pages"):
        skips.append(f"{f['truncated_pages']} pages cut to max_page_bytes (kept)")
    if f.get("seed_bad_lines"):
        skips.append(f"{f['seed_bad_lines']} bad seed lines")
    if skips:
        lines.append("skipped: " + ", ".join(skips))
    return "\n".join(lines)
