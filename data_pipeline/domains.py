"""Domain discovery (stage 6): which domains are math-related, which of their URL paths are,
and which uncollected pages under those paths join the next iteration's seed.

DeepSeekMath: a domain where more than 10% of pages were collected is math-related; a human
then annotates the URL paths in those domains that hold math (e.g. ``mathoverflow.net/questions``)
and the uncollected pages under them become seed. Here the tool writes the report
(``domain_report.json`` / ``.md``) and the candidate paths with counts
(``path_candidates.tsv`` plus an ``annotations_template.txt`` to edit); annotations are read
from a file, one ``domain`` or ``domain/path/`` per line (``#`` comments). ``auto_annotations``
stands in for the human in unattended runs (off by default).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .urls import matches_prefix, path_prefixes

_ANNOTATION = re.compile(r"^[a-z0-9.-]+\.[a-z0-9-]+(:\d+)?(/[^\s]*)?$", re.IGNORECASE)


@dataclass
class PageRow:
    """One pool page as domain discovery sees it."""

    id: str
    url: str
    domain: str
    collected: bool


def domain_report(rows: Iterable[PageRow], threshold: float = 0.10, min_pages: int = 1) -> dict:
    """Per-domain collected fraction; domains above ``threshold`` (with >= ``min_pages`` pages)."""
    pool, got = Counter(), Counter()
    for r in rows:
        pool[r.domain] += 1
        got[r.domain] += r.collected
    math = [
        {"domain": d, "pages": pool[d], "collected": got[d], "fraction": round(got[d] / pool[d], 4)}
        for d in pool
        if pool[d] >= min_pages and got[d] / pool[d] > threshold
    ]
    math.sort(key=lambda x: (-x["collected"], x["domain"]))
    return {
        "threshold": threshold,
        "domains_seen": len(pool),
        "pages": sum(pool.values()),
        "collected": sum(got.values()),
        "math_domains": math,
    }


def write_domain_report(report: dict, out_dir: Path) -> None:
    """``domain_report.json`` and a Markdown table ``domain_report.md`` in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "domain_report.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# Math-related domains (> {report['threshold']:.0%} of pages collected)",
        "",
        f"{report['collected']} of {report['pages']} pages collected across {report['domains_seen']} domains.",
        "",
        "| domain | pages | collected | fraction |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {d['domain']} | {d['pages']} | {d['collected']} | {d['fraction']:.1%} |"
        for d in report["math_domains"]
    ]
    (out_dir / "domain_report.md").write_text("\n".join(lines) + "\n")


def propose_paths(
    rows: Iterable[PageRow], domains: Iterable[str], depth: int = 2, min_pages: int = 2
) -> list[dict]:
    """Candidate URL path prefixes in ``domains`` (holding >= ``min_pages`` pages) with page
    counts, most collected first."""
    wanted = set(domains)
    pool, got = Counter(), Counter()
    for r in rows:
        if r.domain not in wanted:
            continue
        for prefix in path_prefixes(r.url, depth) or [r.domain + "/"]:
            pool[prefix] += 1
            got[prefix] += r.collected
    cands = [
        {
            "prefix": p,
            "pages": pool[p],
            "collected": got[p],
            "uncollected": pool[p] - got[p],
            "fraction": round(got[p] / pool[p], 4),
        }
        for p in pool
        if pool[p] >= min_pages
    ]
    cands.sort(key=lambda c: (-c["collected"], -c["fraction"], c["prefix"]))
    return cands


def write_path_candidates(cands: list[dict], out_dir: Path) -> None:
    """``path_candidates.tsv`` and ``annotations_template.txt`` (uncomment lines to annotate)."""
    out_dir = Path(out_dir)
    rows = ["prefix\tpages\tcollected\tuncollected\tfraction"]
    rows += [
        f"{c['prefix']}\t{c['pages']}\t{c['collected']}\t{c['uncollected']}\t{c['fraction']}"
        for c in cands
    ]
    (out_dir / "path_candidates.tsv").write_text("\n".join(rows) + "\n")
    template = [
        "# URL paths proposed for annotation. Remove the '# ' before each path that holds math;",
        "# pass the file with --annotations. Columns after the path are ignored: pages collected fraction.",
    ]
    template += [f"# {c['prefix']}\t{c['pages']}\t{c['collected']}\t{c['fraction']}" for c in cands]
    (out_dir / "annotations_template.txt").write_text("\n".join(template) + "\n")


def read_annotations(path: str | Path) -> list[str]:
    """Annotated prefixes from ``path`` (first field of each non-comment line).

    Raises FileNotFoundError naming the file, ValueError naming ``file:line`` for a bad entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    prefixes = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        entry = line.split()[0].lower()
        entry = re.sub(r"^https?://", "", entry)
        entry = entry[4:] if entry.startswith("www.") else entry
        if not _ANNOTATION.match(entry):
            raise ValueError(f"{path}:{i}: {entry!r} is not a domain or domain/path")
        prefixes.append(entry)
    return prefixes


def auto_annotations(cands: list[dict], min_fraction: float) -> list[str]:
    """Unattended stand-in for the human: prefixes whose collected fraction >= ``min_fraction``."""
    return [c["prefix"] for c in cands if c["collected"] > 0 and c["fraction"] >= min_fraction]


def seed_additions(rows: Iterable[PageRow], prefixes: list[str]) -> list[str]:
    """Ids of uncollected pages that lie under an annotated prefix (the next seed's additions)."""
    if not prefixes:
        return []
    return sorted(r.id for r in rows if not r.collected and matches_prefix(r.url, prefixes))
