"""Stages 1-4 as datatrove pipelines: WARC -> text -> language -> URL dedup -> near-dedup.

The result, the *pool*, is ``pool/docs/<rank>.jsonl.gz``: what every mining iteration scores.
Six pipelines, each its own stage with its own logging folder (so each resumes on its own):

====================  =====  ===================================================================
stage                 tasks  steps
====================  =====  ===================================================================
``extract``           T      WarcPageReader -> MathHtmlExtractor -> LanguageFilter -> write
                             ``extracted/`` -> URL signature
``url_dups``          1      ExactFindDedups (normalised URLs)
``url_filter``        T      read ``extracted/`` -> ExactDedupFilter -> write ``urldedup/`` ->
                             MinHash signature
``minhash_buckets``   14     MinhashDedupBuckets (one task per band)
``minhash_clusters``  1      MinhashDedupCluster
``minhash_filter``    T      read ``urldedup/`` -> MinhashDedupFilter -> write ``docs/``
====================  =====  ===================================================================

Task ``r`` of a T-task stage reads exactly the file ``<r>.jsonl.gz`` that task ``r`` of the
previous stage wrote, because datatrove's dedup filters match documents by (rank, index).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import JsonlWriter

from .executors import ExecutorConfig, run_stage, stage_stats, stat
from .extract import MathHtmlExtractor
from .jsonl_io import JsonlDocReader
from .langid import LanguageFilter
from .near_dedup import MathWordTokenizer, MinHashParams, url_dedup_config
from .warc import RECORD_DEFECTS, WarcPageReader, defect_stat

RANK_FILE = "${rank}.jsonl.gz"


class RankFileReader(JsonlDocReader):
    """Reads only ``<rank>.jsonl.gz`` of its folder (nothing when that task wrote no file); a
    damaged line fails the task naming it (datatrove's reader would drop it with a warning)."""

    name = "📖 rank file"

    def __init__(self, data_folder: str):
        super().__init__(data_folder)  # no file paths in metadata: they differ between runs

    def run(
        self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
    ) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl.gz"
        if not self.data_folder.exists(name):
            return
        for doc in self.read_files_shard([name]):
            self.update_doc_stats(doc)
            yield doc


class IdFilter(BaseFilter):
    """Keeps documents whose id is listed (one per line) in ``ids_file``."""

    name = "🎯 keep listed ids"

    def __init__(self, ids_file: str):
        super().__init__()
        self.ids_file = ids_file
        self._ids: frozenset[str] | None = None

    def filter(self, doc: Document) -> bool:
        if self._ids is None:
            self._ids = frozenset(Path(self.ids_file).read_text().split("\n"))
        return doc.id in self._ids


def split_glob(pattern: str) -> tuple[str, str, list[str]]:
    """``(folder, pattern relative to it, matching files)`` of a WARC glob.

    Raises FileNotFoundError naming the glob when nothing matches.
    """
    files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"--warc {pattern}: no WARC file matches")
    parts = Path(pattern).parts
    fixed = [
        p
        for p in parts[
            : next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts) - 1)
        ]
    ]
    folder = str(Path(*fixed)) if fixed else "."
    return folder, str(Path(pattern).relative_to(folder)), files


def build_pool(
    warc_glob: str,
    pool_dir: Path,
    *,
    tasks: int,
    executor: ExecutorConfig,
    languages: tuple[str, ...] = ("en", "zh"),
    lang_min_score: float = 0.5,
    max_page_bytes: int = 2_000_000,
    max_link_density: float = 0.5,
    minhash: MinHashParams | None = None,
    on_stage=None,
) -> dict:
    """Run stages 1-4 into ``pool_dir``; return the funnel counts of this part.

    ``on_stage(name)`` is called before each stage (progress display).
    """
    folder, pattern, _ = split_glob(warc_glob)
    minhash = minhash or MinHashParams()
    mh = minhash.to_datatrove()
    url_cfg = url_dedup_config()
    p = Path(pool_dir)
    logs = p / "logs"
    stages = [
        (
            "extract",
            tasks,
            [
                WarcPageReader(folder, glob_pattern=pattern, max_page_bytes=max_page_bytes),
                MathHtmlExtractor(max_link_density=max_link_density),
                LanguageFilter(languages=tuple(languages), min_score=lang_min_score),
                JsonlWriter(str(p / "extracted"), output_filename=RANK_FILE),
                ExactDedupSignature(str(p / "url_sigs"), config=url_cfg),
            ],
        ),
        (
            "url_dups",
            1,
            [ExactFindDedups(str(p / "url_sigs"), str(p / "url_dups"), config=url_cfg)],
        ),
        (
            "url_filter",
            tasks,
            [
                RankFileReader(str(p / "extracted")),
                ExactDedupFilter(str(p / "url_dups"), config=url_cfg),
                JsonlWriter(str(p / "urldedup"), output_filename=RANK_FILE),
                MinhashDedupSignature(
                    str(p / "minhash_sigs"), config=mh, language=MathWordTokenizer()
                ),
            ],
        ),
        (
            "minhash_buckets",
            mh.num_buckets,
            [MinhashDedupBuckets(str(p / "minhash_sigs"), str(p / "minhash_buckets"), config=mh)],
        ),
        (
            "minhash_clusters",
            1,
            [
                MinhashDedupCluster(
                    str(p / "minhash_buckets"), str(p / "minhash_clusters"), config=mh
                )
            ],
        ),
        (
            "minhash_filter",
            tasks,
            [
                RankFileReader(str(p / "urldedup")),
                MinhashDedupFilter(str(p / "minhash_clusters")),
                JsonlWriter(str(p / "docs"), output_filename=RANK_FILE),
            ],
        ),
    ]
    for name, n_tasks, pipeline in stages:
        if on_stage:
            on_stage(name)
        run_stage(name, pipeline, tasks=n_tasks, logging_dir=logs / name, cfg=executor)
    return pool_funnel(logs)


def pool_funnel(logs: Path) -> dict:
    """Counts per stage from the stages' task stats (pages in, kept after each stage, skips)."""
    ex = stage_stats(logs / "extract")
    reader, extractor = WarcPageReader.name, MathHtmlExtractor.name
    uf = stage_stats(logs / "url_filter")
    mf = stage_stats(logs / "minhash_filter")
    return {
        "warc_records": stat(ex, reader, "warc_records"),
        "pages_in": stat(ex, reader, "pages_in"),
        "html_pages": stat(ex, reader, "html_pages_read"),
        "extracted": stat(ex, extractor, "forwarded"),
        "language_kept": stat(ex, LanguageFilter.name, "forwarded"),
        "url_dedup_kept": stat(uf, ExactDedupFilter.name, "forwarded"),
        "near_dedup_kept": stat(mf, MinhashDedupFilter.name, "forwarded"),
        "skipped": {
            key: stat(ex, reader, key)
            for key in (
                "skipped_non_html",
                "skipped_status",
                "empty_page",
                "bad_encoding",
                "warc_corrupt_record",
                "warc_truncated_record",
            )
        }
        | {
            "empty_after_extraction": stat(ex, extractor, "empty_after_extraction"),
            "extract_error": stat(ex, extractor, "extract_error"),
            "language_dropped": stat(ex, LanguageFilter.name, "dropped"),
        },
        # why records were skipped as truncated or corrupt, e.g. {"warc_truncated_short_block": 2}
        "record_defects": {
            defect_stat(r): n for r in RECORD_DEFECTS if (n := stat(ex, reader, defect_stat(r)))
        },
        "truncated_pages": stat(ex, reader, "page_truncated"),
        "encoding_detected": stat(ex, reader, "encoding_detected"),
    }
