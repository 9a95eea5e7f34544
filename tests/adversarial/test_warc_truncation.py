"""Truncated WARC records are skipped and counted by reason, never read as whole pages.

The inputs are real truncated files made from the shipped WARC samples (a Common Crawl excerpt
and a wget crawl): files cut at many byte offsets, gzip members cut inside their last bytes,
records clipped inside complete gzip members (a clipped download), and the ``WARC-Truncated``
header. In every case the pages of the intact records come out exactly as from the whole file.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from dsm_engine.data_pipeline.executors import ExecutorConfig, run_stage
from dsm_engine.data_pipeline.pool import pool_funnel
from dsm_engine.data_pipeline.warc import WarcPageReader

SAMPLES = ("cc-main-2020-34-sample.warc.gz", "academic-homepages-0000.warc.gz")
CUTS_PER_FILE = 40


@dataclass
class Record:
    start: int  # first byte of the record (of its gzip member, when compressed)
    end: int  # first byte after it
    complete_at: int  # a cut at or after this offset leaves the record whole
    kind: str
    url: str | None


def records(data: bytes, compressed: bool) -> list[Record]:
    """The records of a WARC file held in ``data``, with their byte ranges."""
    import io

    from warcio.archiveiterator import ArchiveIterator

    it = ArchiveIterator(io.BytesIO(data))
    found = []
    for record in it:
        found.append([it.offset, record.rec_type, record.rec_headers.get_header("WARC-Target-URI")])
    ends = [start for start, *_ in found[1:]] + [len(data)]
    # uncompressed, the blank lines closing a record carry nothing of it
    trailer = 0 if compressed else len(b"\r\n\r\n")
    return [
        Record(start, end, end - trailer, kind, url) for (start, kind, url), end in zip(found, ends)
    ]


def read(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``({url: text}, stats)`` of one WARC file read by the pipeline's reader."""
    reader = WarcPageReader(str(path.parent), glob_pattern=path.name)
    docs = {doc.metadata["url"]: doc.text for doc in reader.run()}
    return docs, {key: value.n for key, value in reader.stats.stats.items()}


def skipped(stats: dict[str, int]) -> int:
    return stats.get("warc_truncated_record", 0) + stats.get("warc_corrupt_record", 0)


@pytest.fixture(scope="module", params=SAMPLES)
def sample(request, shared_data, tmp_path_factory):
    """One shipped sample, gzip per record as shipped and uncompressed, with its reference
    pages (the whole file read) and its records."""
    root = tmp_path_factory.mktemp("warc_sample")
    packed = (shared_data / "warc" / request.param).read_bytes()
    out = {}
    for compressed, data in ((True, packed), (False, gzip.decompress(packed))):
        whole = root / ("whole.warc.gz" if compressed else "whole.warc")
        whole.write_bytes(data)
        pages, stats = read(whole)
        assert pages and skipped(stats) == 0, "the shipped sample reads clean"
        out[compressed] = (data, pages, records(data, compressed))
    return out


def expected_pages(pages: dict[str, str], recs: list[Record], cut: int) -> dict[str, str]:
    """The reference pages of the records a file cut at ``cut`` still holds whole."""
    whole = {r.url for r in recs if r.kind == "response" and r.complete_at <= cut}
    return {url: text for url, text in pages.items() if url in whole}


def cut_points(recs: list[Record], size: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    cuts = set(rng.sample(range(1, size), CUTS_PER_FILE))
    # and some that matter most: at record boundaries, just inside a record's first bytes
    for r in rng.sample(recs, 6):
        cuts.update({r.start, r.start + 3, r.start + 40})
    return sorted(c for c in cuts if 0 < c < size)


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_file_cut_anywhere_loses_only_the_record_it_cuts(sample, compressed, tmp_path):
    data, pages, recs = sample[compressed]
    path = tmp_path / ("cut.warc.gz" if compressed else "cut.warc")
    for cut in cut_points(recs, len(data), seed=len(data)):
        path.write_bytes(data[:cut])
        docs, stats = read(path)
        assert docs == expected_pages(pages, recs, cut), f"cut at byte {cut}"
        partial = any(r.start < cut < r.complete_at for r in recs)
        assert stats.get("warc_truncated_record", 0) == int(partial), (cut, stats)
        assert not stats.get("warc_corrupt_record"), (cut, stats)


@pytest.mark.parametrize("tail", [1, 2, 4, 8])
def test_gzip_member_cut_in_its_crc_trailer_is_caught(sample, tail, tmp_path):
    """The page bytes all arrived, but the member's CRC32 and size never did."""
    data, pages, recs = sample[True]
    path = tmp_path / "cut.warc.gz"
    for r in recs:
        if r.kind != "response":
            continue
        path.write_bytes(data[: r.end - tail])
        docs, stats = read(path)
        assert docs == expected_pages(pages, recs, r.end - tail)
        assert stats.get("warc_truncated_gzip_cut") == stats.get("warc_truncated_record") == 1


def _clip(block: bytes, how: str) -> bytes:
    head = block.index(b"\r\n\r\n") + 4  # the WARC headers
    body = len(block) - head - 4  # the block, less the blank lines closing the record
    keep = {"one_byte": body - 1, "half": body // 2, "headers_only": 0}[how]
    return block[: head + keep] + b"\r\n\r\n"


@pytest.mark.parametrize("how", ["one_byte", "half", "headers_only"])
@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_clipped_download_mid_file_is_skipped_and_the_rest_read(sample, compressed, how, tmp_path):
    """A response whose block is shorter than its Content-Length, in a complete gzip member
    (or an uncompressed file) between intact records."""
    data, pages, recs = sample[True]
    blocks = [gzip.decompress(data[r.start : r.end]) for r in recs]
    path = tmp_path / ("clipped.warc.gz" if compressed else "clipped.warc")
    responses = [i for i, r in enumerate(recs) if r.kind == "response"]
    for i in responses[:: 3 if how == "half" else 5]:
        parts = [_clip(b, how) if j == i else b for j, b in enumerate(blocks)]
        pack = (lambda b: gzip.compress(b, mtime=0)) if compressed else (lambda b: b)
        path.write_bytes(b"".join(pack(b) for b in parts))
        docs, stats = read(path)
        assert docs == {u: t for u, t in pages.items() if u != recs[i].url}, (i, stats)
        assert skipped(stats) == 1, (i, stats)
        if compressed and how != "one_byte":
            assert stats.get("warc_truncated_short_block") == 1, (i, stats)
        elif compressed:  # the closing blank lines fill the missing byte: the digest tells
            assert stats.get("warc_corrupt_block_digest") == 1, (i, stats)


def test_warc_truncated_header_skips_the_record(sample, tmp_path):
    data, pages, recs = sample[True]
    path = tmp_path / "declared.warc.gz"
    i = next(i for i, r in enumerate(recs) if r.kind == "response" and r.url in pages)
    member = gzip.decompress(data[recs[i].start : recs[i].end])
    head = member.index(b"\r\n\r\n")
    member = member[:head] + b"\r\nWARC-Truncated: length" + member[head:]
    path.write_bytes(data[: recs[i].start] + gzip.compress(member) + data[recs[i].end :])
    docs, stats = read(path)
    assert docs == {u: t for u, t in pages.items() if u != recs[i].url}
    assert stats.get("warc_truncated_declared") == stats.get("warc_truncated_record") == 1


def test_funnel_reports_truncated_records_by_reason(shared_data, tmp_path):
    warcs = tmp_path / "warcs"
    warcs.mkdir()
    for name in SAMPLES:
        data = (shared_data / "warc" / name).read_bytes()
        (warcs / name).write_bytes(data[: len(data) * 2 // 3])  # a download cut short
    logs = tmp_path / "logs"
    reader = WarcPageReader(str(warcs), glob_pattern="*.warc.gz")
    run_stage("extract", [reader], tasks=2, logging_dir=logs / "extract", cfg=ExecutorConfig())
    funnel = pool_funnel(logs)
    assert funnel["skipped"]["warc_truncated_record"] == 2
    assert sum(funnel["record_defects"].values()) == 2
    assert set(funnel["record_defects"]) <= {
        "warc_truncated_short_block",
        "warc_truncated_gzip_cut",
        "warc_truncated_headers_cut",
    }
