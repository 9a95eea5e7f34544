"""Stage 8: remove benchmark text from the corpus (DeepSeekMath §2.1's decontamination rule).

Any segment (line) that holds part of a 10-gram appearing in an evaluation benchmark is
removed; benchmark texts of 3 to 9 words are matched exactly as whole word sequences. Words,
segments and the matching order are defined in :mod:`decont_text` and :mod:`ngram_ref`.

As a datatrove step, :class:`Decontaminator` drops the contaminated lines of each document,
records them in ``doc.metadata["decontamination"]`` and in a removal log (JSON Lines, one
record per removed line: ``id``, ``url``, ``segment``, ``text``, ``benchmarks``, ``ngram``),
drops documents left with no text, and counts what it did in its stats.

``dsm data decontaminate --input DIR_OR_JSONL --out DIR [--benchmarks DIR] [--skip-bad-lines]
[--executor ray] [executor.partition=cpu ...]`` checks every input line first (a line that is not
a JSON object with a string text field fails the run naming its file and line, or with
``--skip-bad-lines`` is skipped and counted in the summary's ``bad_lines``), runs
``JsonlDocReader -> Decontaminator -> JsonlWriter`` (locally, on Slurm or on Ray:
:mod:`executors`) and writes ``DIR/documents/*.jsonl.gz`` (the clean corpus),
``DIR/removed/*.jsonl`` (the removal log), ``DIR/logs/`` (datatrove logs, completion markers,
per-task ``stats/``) and ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep

from dsm_engine.config import ConfigError, load_config
from dsm_engine.data_pipeline.decont_text import split_segments
from dsm_engine.data_pipeline.executors import ExecutorConfig, run_stage, stage_stats, step_stats
from dsm_engine.data_pipeline.jsonl_io import JsonlDocReader, count_records, jsonl_files
from dsm_engine.data_pipeline.ngram_index import Backend, load_benchmark_index
from dsm_engine.data_pipeline.ngram_ref import NGramMatcher
from dsm_engine.jsonl import SKIP_HINT, BadLines

STEP_NAME = "benchmark n-gram decontamination"


def default_benchmarks_dir() -> Path:
    """``$DSM_BENCHMARKS_DIR``, else ``shared/data/benchmarks`` beside the checkout."""
    env = os.environ.get("DSM_BENCHMARKS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"


class Decontaminator(PipelineStep):
    """Removes benchmark-contaminated lines from each document.

    Args:
        benchmarks_dir: evaluation benchmarks folder (see :mod:`benchmark_texts`); ignored when
            ``index`` is given. The index is built lazily in each task, so the step pickles small.
        removal_log: folder for the removal log (``{rank:05d}.jsonl`` per task), or None.
        backend: ``"cpp"`` (the hashed C++ index) or ``"python"`` (the reference matcher).
        n, min_short: the rule's n-gram length (10) and shortest exactly-matched text (3).
        batch_size: documents per index query.
        index: a prebuilt matcher to use instead of building one.
    """

    name = STEP_NAME
    type = "🦠 - DECONT"

    def __init__(
        self,
        benchmarks_dir: str | Path | None = None,
        removal_log: DataFolderLike | None = None,
        backend: Backend = "cpp",
        n: int = 10,
        min_short: int = 3,
        batch_size: int = 256,
        index: NGramMatcher | None = None,
    ) -> None:
        super().__init__()
        self.benchmarks_dir = Path(benchmarks_dir) if benchmarks_dir else default_benchmarks_dir()
        self.removal_log = get_datafolder(removal_log) if removal_log is not None else None
        self.backend = backend
        self.n = n
        self.min_short = min_short
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._index = index

    @property
    def index(self) -> NGramMatcher:
        if self._index is None:
            self._index = load_benchmark_index(
                self.benchmarks_dir, self.backend, self.n, self.min_short
            )
        return self._index

    def _batches(self, data: DocumentsPipeline) -> Iterator[list[Document]]:
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def clean(self, doc: Document, matches: list, log) -> bool:
        """Drops ``matches``' lines from ``doc`` in place; returns False when nothing is left."""
        lines = split_segments(doc.text)
        removed = {m.segment: m for m in matches}
        url = doc.metadata.get("url")
        benchmarks: set[str] = set()
        removed_chars = 0
        for m in matches:
            benchmarks.update(m.benchmarks)
            removed_chars += len(lines[m.segment])
            for name in m.benchmarks:
                self.stat_update(f"segments_removed_{name}")
            if log is not None:
                record = {
                    "id": doc.id,
                    "url": url,
                    "segment": m.segment,
                    "text": lines[m.segment],
                    "benchmarks": list(m.benchmarks),
                    "ngram": m.ngram,
                }
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
        doc.text = "\n".join(line for i, line in enumerate(lines) if i not in removed)
        doc.metadata["decontamination"] = {
            "segments_removed": len(matches),
            "chars_removed": removed_chars,
            "benchmarks": sorted(benchmarks),
        }
        self.stat_update("segments_removed", value=len(matches))
        self.stat_update("chars_removed", value=removed_chars)
        return bool(doc.text.strip())

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data is None:
            return
        index = self.index
        log = self.removal_log.open(f"{rank:05d}.jsonl", "wt") if self.removal_log else None
        try:
            for batch in self._batches(data):
                with self.track_time(unit="batch"):
                    results = index.query([doc.text for doc in batch])
                for doc, matches in zip(batch, results):
                    self.stat_update("documents_in")
                    if not matches:
                        self.stat_update("documents_clean")
                        yield doc
                        continue
                    self.stat_update("documents_contaminated")
                    if self.clean(doc, matches, log):
                        self.update_doc_stats(doc)
                        yield doc
                    else:
                        self.stat_update("documents_dropped_empty")
        finally:
            if log is not None:
                log.close()


def decontaminate_jsonl(
    input_path: str | Path,
    out_dir: str | Path,
    benchmarks_dir: str | Path | None = None,
    *,
    backend: Backend = "cpp",
    tasks: int = 1,
    workers: int = 1,
    text_key: str = "text",
    skip_bad_lines: bool = False,
    executor: ExecutorConfig | None = None,
) -> dict[str, float]:
    """Decontaminates JSON Lines documents into ``out_dir``; returns the step's counters.

    ``executor`` says where the tasks run (default: ``workers`` local processes).

    ``input_path`` is a ``.jsonl[.gz|.zst]`` file or a folder of them (e.g. a datatrove
    ``JsonlWriter`` output); records need ``text_key`` and may carry ``id`` and ``metadata``.
    A bad line raises ValueError naming its file and line before anything is written, unless
    ``skip_bad_lines``: then it is skipped and counted (``bad_lines``, and the first ones named
    in ``summary.json``). A rerun into the same ``out_dir`` skips tasks datatrove marked completed.
    """
    from datatrove.pipeline.writers import JsonlWriter

    input_path = Path(input_path)
    files = jsonl_files(input_path)
    bad = BadLines(skip=skip_bad_lines, hint=SKIP_HINT)
    if not count_records(files, text_key, bad):
        raise ValueError(f"input {input_path} holds no records")
    benchmarks = Path(benchmarks_dir) if benchmarks_dir else default_benchmarks_dir()
    if not benchmarks.is_dir():
        raise FileNotFoundError(f"benchmarks folder {benchmarks} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The reader gets the exact file list, so stray files in the folder are never read.
    root = input_path.parent if input_path.is_file() else input_path
    paths_file = out_dir / "input_files.txt"
    paths_file.write_text("".join(f"{f.relative_to(root)}\n" for f in files))
    reader = JsonlDocReader(
        str(root), paths_file=str(paths_file), text_key=text_key, skip_bad_lines=skip_bad_lines
    )
    pipeline = [
        reader,
        Decontaminator(benchmarks, removal_log=str(out_dir / "removed"), backend=backend),
        JsonlWriter(str(out_dir / "documents")),
    ]
    executor = executor or ExecutorConfig(workers=workers)
    logs = out_dir / "logs"
    run_stage("decontaminate", pipeline, tasks=tasks, logging_dir=logs, cfg=executor)
    counters = step_stats(stage_stats(logs), STEP_NAME)
    counters["bad_lines"] = bad.count
    summary = {"input": str(input_path), "benchmarks": str(benchmarks), **counters}
    summary["bad_line_examples"] = bad.named
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return counters


def _executor_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``executor.KEY=VALUE`` arguments (as ``KEY=VALUE``) and the rest of ``argv``."""
    overrides, rest = [], []
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            key = arg.split("=", 1)[0]
            if not key.startswith("executor."):
                raise ConfigError(f"{arg}: only executor.KEY=VALUE settings are accepted")
            overrides.append(arg.removeprefix("executor."))
        else:
            rest.append(arg)
    return overrides, rest


def main(argv: list[str]) -> int:
    """``dsm data decontaminate``; ``executor.KEY=VALUE`` sets any :class:`ExecutorConfig` field."""
    parser = argparse.ArgumentParser(
        prog="dsm data decontaminate",
        description="Remove lines holding benchmark 10-grams (or whole 3-9 word benchmark texts).",
    )
    parser.add_argument("--input", required=True, help="a .jsonl[.gz] file or a folder of them")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--benchmarks", default=None, help=f"benchmarks folder (default {default_benchmarks_dir()})"
    )
    parser.add_argument("--backend", choices=["cpp", "python"], default="cpp")
    parser.add_argument("--tasks", type=int, default=1, help="datatrove tasks (input shards)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--text-key", default="text")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) lines that are not JSON objects with a string text field",
    )
    parser.add_argument("--executor", choices=["local", "slurm", "ray"], default="local")
    try:
        overrides, rest = _executor_overrides(argv)
        args = parser.parse_args(rest)
        executor = load_config(
            ExecutorConfig, None, [f"kind={args.executor}", f"workers={args.workers}", *overrides]
        )
        counters = decontaminate_jsonl(
            args.input,
            args.out,
            args.benchmarks,
            backend=args.backend,
            tasks=args.tasks,
            workers=args.workers,
            text_key=args.text_key,
            skip_bad_lines=args.skip_bad_lines,
            executor=executor,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"dsm data decontaminate: error: {e}", file=sys.stderr)
        return 2
    count = lambda key: int(counters.get(key, 0))
    if count("bad_lines"):
        print(
            f"dsm data decontaminate: warning: skipped {count('bad_lines')} bad line(s); "
            f"see bad_line_examples in {Path(args.out) / 'summary.json'}",
            file=sys.stderr,
        )
    print(
        f"decontamination: {count('documents_in')} documents in, "
        f"{count('documents_contaminated')} contaminated, {count('segments_removed')} lines "
        f"removed, {count('documents_dropped_empty')} dropped as empty"
    )
    print(
        f"clean documents: {Path(args.out) / 'documents'}; removal log: {Path(args.out) / 'removed'}"
    )
    return 0
