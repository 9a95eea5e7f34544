"""Reading JSON Lines: one iterator for every reader in the engine, and one rule for bad lines.

Prompts, SFT examples, reward-model labels, benchmark rows, metrics and corpus documents are all
JSON Lines; reading them in one place keeps the error messages uniform (they name the file and
line, and the config field that pointed there) and lets every reader take ``.gz`` / ``.zst``.

The rule for a line that cannot be read (not JSON, not UTF-8, a compressed file cut off, or a
record its reader rejects): fail naming the file and line, unless the user asked to skip such
lines (``--skip-bad-lines``); then it is skipped, counted and named, never dropped silently.
:class:`BadLines` carries that choice and the tally.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SKIP_HINT = "pass --skip-bad-lines to skip such lines"


@dataclass
class BadLines:
    """Whether bad lines are skipped, and the ones skipped so far.

    Args:
        skip: False (the default everywhere): the first bad line raises ``ValueError``; True:
            bad lines are skipped, counted in ``count`` and the first ``keep`` named in ``named``.
        hint: appended to the error, e.g. how to skip (:data:`SKIP_HINT` for commands that can).
    """

    skip: bool = False
    hint: str = ""
    keep: int = 20
    count: int = 0
    named: list[str] = field(default_factory=list)

    def reject(self, location: str, reason: str) -> None:
        """Line ``location`` (``file:line``) is bad: raise ValueError unless skipping, else count it."""
        if not self.skip:
            raise ValueError(f"{location}: {reason}" + (f" ({self.hint})" if self.hint else ""))
        self.count += 1
        if len(self.named) < self.keep:
            self.named.append(f"{location}: {reason}")

    def summary(self) -> str:
        """One line for the user: how many lines were skipped and which (first few)."""
        more = f", and {self.count - len(self.named)} more" if self.count > len(self.named) else ""
        return f"skipped {self.count} bad line(s): " + "; ".join(self.named) + more


def open_text(path: str | Path) -> IO[str]:
    """``path`` opened for reading UTF-8 text, decompressing ``.gz`` / ``.zst``."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import zstandard  # only needed for .zst inputs (the ``data`` extra)

        return zstandard.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _open_bytes(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        import zstandard

        return zstandard.open(path, "rb")
    return open(path, "rb")


def iter_jsonl(
    path: str | Path, where: str = "", bad: BadLines | None = None
) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line of ``path``.

    A missing file raises ``FileNotFoundError``; a line that is not UTF-8 JSON, or a compressed
    file cut off, goes to ``bad`` (default: raise ``ValueError``). Both name ``where`` (the
    config field or argument that pointed here, if given), the file and the line.
    """
    path = Path(path)
    prefix = f"{where}: " if where else ""
    bad = bad if bad is not None else BadLines()
    if not path.is_file():
        raise FileNotFoundError(f"{prefix}{path} does not exist")
    lineno = 0
    with _open_bytes(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    yield lineno, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    bad.reject(f"{prefix}{path}:{lineno}", f"not UTF-8 (byte {e.start})")
                except json.JSONDecodeError as e:
                    bad.reject(f"{prefix}{path}:{lineno}", f"not valid JSON ({e.msg})")
        except (EOFError, OSError, zlib.error) as e:  # gzip / zstd stream cut off or damaged
            bad.reject(f"{prefix}{path}:{lineno + 1}", f"compressed file cut off or damaged ({e})")
