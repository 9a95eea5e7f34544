"""Reading JSON Lines: one iterator for every reader in the engine.

Prompts, SFT examples, reward-model labels, benchmark rows, metrics and corpus documents are all
JSON Lines; reading them in one place keeps the error messages uniform (they name the file and
line, and the config field that pointed there) and lets every reader take ``.gz`` / ``.zst``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def open_text(path: str | Path) -> IO[str]:
    """``path`` opened for reading UTF-8 text, decompressing ``.gz`` / ``.zst``."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import zstandard  # only needed for .zst inputs (the ``data`` extra)

        return zstandard.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path, where: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line of ``path``.

    A missing file raises ``FileNotFoundError`` and a malformed line ``ValueError``, both
    naming ``where`` (the config field or argument that pointed here, if given), the file and
    the line.
    """
    path = Path(path)
    prefix = f"{where}: " if where else ""
    if not path.is_file():
        raise FileNotFoundError(f"{prefix}{path} does not exist")
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{prefix}{path}:{lineno}: not valid JSON ({e.msg})") from None
