"""The synthetic pages of :mod:`synthetic_pages` as WARC files, and a WARC of awkward records.

``write_synthetic_warc`` writes math, non-math, mixed-domain and duplicate pages as HTTP
responses (one seed always gives the same bytes) and returns the manifest tests check against;
``write_robustness_warc`` writes the records a crawl really holds that break naive readers.
"""

from __future__ import annotations

import gzip
import io
import random
import re
from pathlib import Path

from dsm_engine.data_pipeline.synthetic_pages import (
    MATH_DOMAINS,
    MIXED_DOMAIN,
    STYLES,
    TOPICS,
    SyntheticPage,
    _boilerplate,
    _gsm8k,
    _math_page,
    _prose,
    default_gsm8k_train,
)


def _record_id(url: str, date: str, body: bytes) -> str:
    """A reproducible record id, so that one seed always writes the same bytes."""
    import hashlib
    import uuid

    return f"<urn:uuid:{uuid.UUID(bytes=hashlib.sha1(url.encode() + date.encode() + body).digest()[:16])}>"


def _http_record(writer, url: str, body: bytes, ctype: str, date: str, status: str = "200 OK"):
    from warcio.statusandheaders import StatusAndHeaders

    headers = StatusAndHeaders(
        status, [("Content-Type", ctype), ("Content-Length", str(len(body)))], protocol="HTTP/1.1"
    )
    rec = writer.create_warc_record(
        url,
        "response",
        payload=io.BytesIO(body),
        http_headers=headers,
        warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": _record_id(url, date, body)},
    )
    writer.write_record(rec)


def write_synthetic_warc(
    path: str | Path,
    *,
    n_math: int = 40,
    n_nonmath: int = 120,
    n_mixed_math: int = 8,
    n_url_duplicates: int = 4,
    n_near_duplicates: int = 4,
    seed: int = 0,
    gsm8k_path: str | Path | None = None,
    gsm8k_offset: int = 0,
) -> list[SyntheticPage]:
    """Write a gzipped WARC of synthetic pages to ``path``; return the manifest (one per record).

    ``n_math`` math pages on math domains (styles cycle through ``STYLES``; each carries a GSM8K
    train question from ``gsm8k_path`` starting at row ``gsm8k_offset``, default: the shared
    copy), ``n_mixed_math`` math pages under ``learn-hub.example.net/math/`` beside non-math
    pages on the same domain, ``n_nonmath`` prose pages, then ``n_url_duplicates`` refetches
    under a differently spelled URL and ``n_near_duplicates`` copies with one word changed.
    A non-HTML response (image/png) is added and must be skipped by readers.
    """
    from warcio.warcwriter import WARCWriter

    rng = random.Random(seed)
    gsm = _gsm8k(Path(gsm8k_path) if gsm8k_path else default_gsm8k_train())[gsm8k_offset:]
    pages: list[tuple[SyntheticPage, str]] = []
    for i in range(n_math + n_mixed_math):
        style = STYLES[i % len(STYLES)]
        row = gsm[i] if i < len(gsm) else None
        title, body, planted = _math_page(
            rng, style, row and row["question"], row and row["answer"]
        )
        if i < n_math:
            domain = MATH_DOMAINS[i % len(MATH_DOMAINS)]
            url = f"https://{domain}/questions/{1000 + i}/{re.sub(r'[^a-z]+', '-', title.lower())[:30]}"
        else:
            domain = MIXED_DOMAIN
            url = f"https://{domain}/math/lesson-{i}.html"
        pages.append(
            (
                SyntheticPage(url, "math", style, domain, planted),
                _boilerplate(rng, domain, body, title),
            )
        )
    for i in range(n_nonmath):
        topic = sorted(TOPICS)[i % len(TOPICS)]
        domain = MIXED_DOMAIN if i % 10 == 0 else f"{topic}-{i % 5}.example.com"
        url = f"https://{domain}/{topic}/post-{i}"
        body = "".join(
            f"<p>{_prose(rng, topic, rng.randint(4, 8))}</p>" for _ in range(rng.randint(2, 4))
        )
        title = f"{topic.title()} notes {i}"
        pages.append(
            (SyntheticPage(url, "nonmath", "", domain), _boilerplate(rng, domain, body, title))
        )
    originals = list(pages)
    for j in range(n_url_duplicates):
        page, doc = originals[(j * 7) % len(originals)]
        parts = page.url.split("/", 3)
        url = f"{parts[0]}//WWW.{parts[2].upper()}/{parts[3]}/?utm_source=feed#comments"
        pages.append(
            (
                SyntheticPage(
                    url, page.kind, page.style, page.domain, page.latex, duplicate_of=page.url
                ),
                doc,
            )
        )
    for j in range(n_near_duplicates):
        page, doc = originals[(j * 11 + 3) % len(originals)]
        url = page.url.rstrip("/") + "-copy"
        near = doc.replace("</article>", "<p>Thanks for reading.</p></article>", 1)
        pages.append(
            (
                SyntheticPage(
                    url, page.kind, page.style, page.domain, page.latex, near_duplicate_of=page.url
                ),
                near,
            )
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for k, (page, doc) in enumerate(pages):
            date = f"2024-01-{1 + k % 28:02d}T12:00:00Z"
            _http_record(writer, page.url, doc.encode("utf-8"), "text/html; charset=utf-8", date)
        _http_record(
            writer,
            "https://algebra-tutor.example.com/logo.png",
            b"\x89PNG\r\n\x1a\n" + bytes(64),
            "image/png",
            "2024-01-01T00:00:00Z",
        )
    return [p for p, _ in pages]


def write_robustness_warc(path: str | Path, *, huge_mb: int = 50) -> dict[str, str]:
    """A WARC of awkward records; returns ``{case: url}`` for the cases tests look for.

    In order: a good page, an empty page, a page whose declared charset does not exist (bytes in
    cp1251), binary noise served as text/html, a ``huge_mb`` MB page, a gzip member with
    corrupted bytes, another good page (must still be read), and a record cut in half (the end
    of the file).
    """
    from warcio.warcwriter import WARCWriter

    cases = {
        "good": "https://robust.example.org/good",
        "empty": "https://robust.example.org/empty",
        "unknown_encoding": "https://robust.example.org/klingon",
        "binary": "https://robust.example.org/noise",
        "huge": "https://robust.example.org/huge",
        "corrupt": "https://robust.example.org/corrupt",
        "after_corrupt": "https://robust.example.org/after",
        "truncated": "https://robust.example.org/truncated",
    }
    page = "<html><body><p>{}</p></body></html>"
    members: list[bytes] = []

    def member(url: str, body: bytes, ctype: str = "text/html; charset=utf-8") -> bytes:
        buf = io.BytesIO()
        _http_record(WARCWriter(buf, gzip=True), url, body, ctype, "2024-02-01T00:00:00Z")
        return buf.getvalue()

    members.append(member(cases["good"], page.format("Good page: the sum $1+2=3$ holds.").encode()))
    members.append(member(cases["empty"], b""))
    russian = page.format("Это страница на русском языке о погоде и природе. " * 20).encode(
        "cp1251"
    )
    members.append(member(cases["unknown_encoding"], russian, "text/html; charset=x-klingon-8"))
    noise_rng = random.Random(0)
    noise = bytes(noise_rng.getrandbits(8) for _ in range(4096))
    members.append(member(cases["binary"], noise, "text/html; charset=x-unknown"))
    paragraph = "<p>" + "A very long page about nothing in particular. " * 40 + "</p>\n"
    huge = (
        "<html><body>" + paragraph * (huge_mb * 1_000_000 // len(paragraph) + 1) + "</body></html>"
    ).encode()
    members.append(member(cases["huge"], huge))
    corrupt = bytearray(
        member(cases["corrupt"], page.format("this record is damaged " * 50).encode())
    )
    mid = len(corrupt) // 2
    corrupt[mid : mid + 16] = bytes(16)  # zeroed deflate bytes: the member no longer inflates
    members.append(bytes(corrupt))
    members.append(
        member(cases["after_corrupt"], page.format("Read after the damaged record.").encode())
    )
    truncated = member(cases["truncated"], page.format("cut short " * 200).encode())
    members.append(truncated[: len(truncated) // 2])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"".join(members))
    assert gzip.decompress(members[0])  # the writer really produced gzip members
    return cases
