"""The files a recipe's report is made of: its record as JSON and its tables as Markdown, with
the run's ``meta`` (device, versions, commit, load) in both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report_files(
    out_dir: str | Path,
    *,
    json_name: str,
    record: dict[str, Any],
    title: str,
    body: str,
    meta: dict[str, str] | None = None,
    md_name: str = "report.md",
) -> Path:
    """Write ``json_name`` (``meta`` first, then ``record``) and ``md_name`` (``# title``, the
    ``meta`` on one line, then ``body``) under ``out_dir``, created if missing; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / json_name).write_text(json.dumps({"meta": meta or {}, **record}, indent=1) + "\n")
    header = " | ".join(f"{k}: {v}" for k, v in (meta or {}).items())
    (out / md_name).write_text(f"# {title}\n\n{header}\n\n{body}")
    return out
