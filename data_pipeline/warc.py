"""WARC/WET reader (stage 1) that survives real crawl data.

datatrove's ``WarcReader`` stops a task at the first broken gzip member and silently drops
pages it cannot decode. Ours, a ``BaseDiskReader`` too, keeps going and counts every skip in
the task stats (``warc_corrupt_record``, ``warc_truncated_record``, ``bad_encoding``,
``empty_page``, ``page_truncated``, ``skipped_non_html``, ``skipped_status``), logging the URL:
- a truncated record is skipped, never read as a whole page: a ``WARC-Truncated`` header, a
  block shorter than its ``Content-Length`` (a clipped download, a file cut short), a gzip
  member cut off (no end of stream / CRC trailer), a file ending inside a record's headers;
  each counted as ``warc_truncated_<reason>`` too (see ``RECORD_DEFECTS``);
- a corrupt record (bad gzip bytes, unparsable headers, a failed ``WARC-Block-Digest``): resume
  at the next gzip member / ``WARC/1.`` header;
- an undeclared or unknown encoding: HTTP header, then ``<meta charset>``, then UTF-8, then
  charset detection (charset-normalizer); undecodable bytes are skipped;
- a page larger than ``max_page_bytes``: truncated to that size (HTML parsers recover);
- WET ``conversion`` records are kept as text (``metadata["content_format"] == "text"``).
Each document keeps ``url``, ``url_norm``, ``domain`` and ``date`` (the fetch date).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from .urls import normalize_url, url_domain

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE
)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
# declared charsets that pages get wrong in a predictable way: decode with the superset
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "iso-8859-1": "cp1252",
    "latin-1": "cp1252",
    "ascii": "cp1252",
    "us-ascii": "cp1252",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
}
_GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/1."


def decode_html(body: bytes, declared: str | None = None) -> tuple[str | None, str]:
    """Decode a page: ``(text, how)``; ``text`` is None when no encoding fits.

    ``how`` is the encoding used, prefixed ``detected:`` when charset detection chose it.
    """
    candidates = []
    if declared:
        candidates.append(declared)
    if m := _META_CHARSET.search(body[:4096]):
        candidates.append(m.group(1).decode("ascii", "ignore"))
    candidates.append("utf-8")
    for enc in candidates:
        enc = _SUPERSETS.get(enc.lower(), enc)
        try:
            return body.decode(enc).replace("\x00", ""), enc
        except (UnicodeDecodeError, LookupError):
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(body[:200_000]).best()
    if best is not None and best.encoding:
        text = body.decode(best.encoding, errors="replace")
        # detection on binary noise picks *something*: refuse replacement and control characters
        bad = text.count("\ufffd") + sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f")
        if bad <= 0.01 * max(len(text), 1):
            return text.replace("\x00", ""), f"detected:{best.encoding}"
    return None, "undecodable"


def _next_member(fh, start: int, magic: bytes, chunk: int = 1 << 20) -> int | None:
    """Offset of the next ``magic`` at or after ``start`` in ``fh`` (None at end of file)."""
    fh.seek(start)
    carry = b""
    pos = start
    while True:
        block = fh.read(chunk)
        if not block:
            return None
        data = carry + block
        idx = data.find(magic)
        if idx >= 0:
            return pos - len(carry) + idx
        carry = data[-(len(magic) - 1) :]
        pos += len(block)


# why a record is skipped as incomplete or damaged: reason -> (counter, description); each
# skip also adds ``<counter>_<reason>`` (e.g. ``warc_truncated_short_block``)
RECORD_DEFECTS = {
    "declared": ("warc_truncated_record", "the crawler marked it with a WARC-Truncated header"),
    "short_block": ("warc_truncated_record", "its block is shorter than its Content-Length"),
    "length_mismatch": (
        "warc_truncated_record",
        "its block does not end where its Content-Length says",
    ),
    "gzip_cut": ("warc_truncated_record", "its gzip member is cut off"),
    "headers_cut": ("warc_truncated_record", "the file ends inside its headers"),
    "block_digest": ("warc_corrupt_record", "its block does not match its WARC-Block-Digest"),
}


def defect_stat(reason: str) -> str:
    """The per-reason counter of a ``RECORD_DEFECTS`` reason, e.g. ``warc_truncated_gzip_cut``."""
    return f"{RECORD_DEFECTS[reason][0].removesuffix('_record')}_{reason}"


def record_defect(record, iterator) -> str | None:
    """Why warcio's current ``record`` cannot be trusted (a ``RECORD_DEFECTS`` key), else None.

    Reads the record to its end, as ``iterator`` would before the next one: a block that ends
    before its ``Content-Length`` (a clipped download, a file cut short), other bytes where the
    blank lines closing it should be, a gzip member whose stream never ends (cut inside its last
    bytes or CRC trailer) or a block that fails its digest all mean the page is not the page
    that was served. ``iterator`` must check digests (``check_digests=True``).
    """
    if record.rec_headers.get_header("WARC-Truncated"):
        return "declared"
    if record.rec_headers.get_header("Content-Length") is None:  # mandatory: the headers stop early
        return "headers_cut"
    errors = iterator.err_count
    iterator.read_to_end()
    if getattr(record.raw_stream, "limit", 0) > 0:  # warcio's LimitReader: bytes still owed
        return "short_block"
    if iterator.err_count > errors:
        return "length_mismatch"
    decompressor = iterator.reader.decompressor
    # a member that never ended with nothing after it in the stream: the file ended inside it
    unended = decompressor is not None and not getattr(decompressor, "eof", True)
    if unended and iterator.next_line is None:
        return "gzip_cut"
    # payload digests are not checked: crawlers disagree on whether transfer encodings count
    if any(p.startswith("block digest") for p in record.digest_checker.problems):
        return "block_digest"
    return None


def _ends_unfinished(fh, start: int, magic: bytes) -> bool:
    """Whether the last record of ``fh``, from ``start`` on, is cut off rather than damaged: its
    gzip member inflates cleanly but never ends, or (uncompressed) its headers never end."""
    fh.seek(start)
    rest = fh.read()
    if magic != _GZIP_MAGIC:
        return b"\r\n\r\n" not in rest
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        inflater.decompress(rest)
    except zlib.error:
        return False
    return not inflater.eof


def warc_file_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a WARC/WET (or ARC) file, or None when it starts like one.

    Looks at the first bytes only (inflated when gzip): an empty file, gzip that does not
    inflate, or anything but a ``WARC/1.x`` or ARC ``filedesc://`` header is named.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head:
        return "empty file"
    if head.startswith(_GZIP_MAGIC[:2]):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 256)
        except zlib.error as e:
            return f"gzip data that does not inflate ({e})"
    head = head.lstrip(b"\r\n")
    if head.startswith((b"WARC/", b"filedesc://")):
        return None
    return f"not a WARC file (it starts with {head[:32]!r})"


class WarcPageReader(BaseDiskReader):
    """Reads HTML pages (and WET text) from ``*.warc[.gz]`` files as datatrove Documents.

    Args:
        data_folder: folder holding the WARC files (local path or any fsspec URL).
        glob_pattern: files to read, relative to ``data_folder`` (e.g. ``"*.warc.gz"``).
        paths_file: alternatively, a file listing the paths to read.
        max_page_bytes: pages longer than this are truncated to it (counted ``page_truncated``).
        limit: at most this many documents per task (-1: all).
    """

    name = "🕷 WARC pages (robust)"
    _requires_dependencies = ["warcio"]

    def __init__(
        self,
        data_folder: DataFolderLike,
        glob_pattern: str | None = None,
        paths_file: str | None = None,
        max_page_bytes: int = 2_000_000,
        limit: int = -1,
        file_progress: bool = False,
        default_metadata: dict | None = None,
    ):
        super().__init__(
            data_folder,
            paths_file=paths_file,
            limit=limit,
            file_progress=file_progress,
            default_metadata=default_metadata,
            glob_pattern=glob_pattern,
            add_file_path=False,
        )
        self.max_page_bytes = max_page_bytes

    def read_file(self, filepath: str) -> DocumentsPipeline:
        with self.data_folder.open(filepath, "rb", compression=None) as fh:
            head = fh.read(3)
            magic = _GZIP_MAGIC if head == _GZIP_MAGIC else _WARC_MAGIC
            start = 0
            while start is not None:
                start = yield from self._read_from(fh, filepath, start, magic)

    def _read_from(self, fh, filepath: str, start: int, magic: bytes) -> Iterator:
        """Yield documents from offset ``start``; return where to resume after a corrupt record."""
        from warcio.archiveiterator import ArchiveIterator

        fh.seek(start)
        record_start, url, iterator, defect = start, None, None, None
        try:
            iterator = ArchiveIterator(fh, arc2warc=True, check_digests=True)
            while True:
                url = None
                record = next(iterator, None)
                if record is None:
                    break
                # warcio's offset of the current record (get_record_offset() would consume it)
                record_start = iterator.offset
                url = record.rec_headers.get_header("WARC-Target-URI")
                self.stat_update("warc_records")
                with self.track_time():
                    page, counters = self._process(record, url)
                    defect = record_defect(record, iterator)
                if defect:
                    self._count_defect(defect, filepath, record_start, url)
                    if magic == _WARC_MAGIC and defect != "declared":
                        # uncompressed: a clipped block may have swallowed the records after it
                        return _next_member(fh, record_start + 1, magic)
                    continue
                for key, message in counters:
                    self.stat_update(key)
                    if message:
                        (logger.info if key == "empty_page" else logger.warning)(message)
                if page is not None and (
                    doc := self.get_document_from_dict(page, filepath, f"{record_start}")
                ):
                    yield doc
            size = getattr(fh, "size", None)
            if size is not None and iterator.offset < size and not defect:
                # bytes after the last whole record that never parsed as one: the file ends
                # inside a record's headers (or a gzip member's header)
                self._count_defect("headers_cut", filepath, iterator.offset, None)
            return None
        except (Exception, zlib.error) as e:  # noqa: BLE001 - warcio raises many kinds on bad bytes
            # after a record is read to its end, warcio's offset points at the next (failing) one
            record_start = max(
                record_start, getattr(iterator, "offset", record_start) or record_start
            )
            resume = _next_member(fh, record_start + 1, magic)
            if (
                resume is None
                and not isinstance(e, zlib.error)
                and _ends_unfinished(fh, record_start, magic)
            ):
                self._count_defect("headers_cut", filepath, record_start, url)
                return None
            self.stat_update("warc_corrupt_record")
            logger.warning(
                f"corrupt WARC record in {filepath} at byte {record_start} (url={url}): {e!r}"
            )
            return resume

    def _count_defect(self, reason: str, filepath: str, offset: int, url: str | None) -> None:
        counter, why = RECORD_DEFECTS[reason]
        self.stat_update(counter, defect_stat(reason))
        logger.warning(f"WARC record skipped in {filepath} at byte {offset} (url={url}): {why}")

    def _process(self, record, url: str | None) -> tuple[dict | None, list[tuple[str, str]]]:
        """``(page or None, counters)``: the counters (each with a log line, "" for none) are
        added only once the record proved complete, so a truncated page counts once."""
        if record.rec_type not in ("response", "conversion"):
            return None, []
        self.stat_update("pages_in")
        is_wet = record.rec_type == "conversion"
        ctype = (record.rec_headers.get_header("WARC-Identified-Payload-Type") or "").lower()
        declared = None
        if not is_wet and record.http_headers is not None:
            status = record.http_headers.get_statuscode() or ""
            if not status.startswith("2"):
                return None, [("skipped_status", "")]
            http_type = record.http_headers.get_header("Content-Type") or ""
            if m := _HEADER_CHARSET.search(http_type):
                declared = m.group(1)
            ctype = ctype or http_type.split(";")[0].strip().lower()
        if is_wet and ctype and ctype != "text/plain":
            return None, [("skipped_non_html", "")]
        body = record.content_stream().read(self.max_page_bytes + 1)
        sniffed_html = body.lstrip()[:200].lower().startswith((b"<!doctype html", b"<html"))
        if not is_wet and ctype not in _HTML_TYPES and (ctype or not sniffed_html):
            return None, [("skipped_non_html", "")]
        counters = []
        if len(body) > self.max_page_bytes:
            body = body[: self.max_page_bytes]
            counters.append(
                ("page_truncated", f"page larger than {self.max_page_bytes} bytes truncated: {url}")
            )
        if not body.strip():
            return None, [*counters, ("empty_page", f"empty page skipped: {url}")]
        text, how = decode_html(body, declared)
        if text is None:
            message = f"page in an unknown encoding skipped (declared {declared!r}): {url}"
            return None, [*counters, ("bad_encoding", message)]
        if how.startswith("detected:"):
            counters.append(("encoding_detected", ""))
        counters.append(("html_pages_read", ""))
        url = url or ""
        page = {
            "text": text,
            "id": record.rec_headers.get_header("WARC-Record-ID") or url,
            "url": url,
            "url_norm": normalize_url(url),
            "domain": url_domain(url),
            "date": record.rec_headers.get_header("WARC-Date") or "",
            "content_format": "text" if is_wet else "html",
        }
        return page, counters
