"""Finding and reading the JSON Lines document files that stages 8 and 9 consume."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from dsm_engine.jsonl import iter_jsonl, open_text

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def jsonl_files(path: str | Path) -> list[Path]:
    """The JSON Lines files at ``path``: the file itself, or a folder's, searched recursively.

    A ``dsm data decontaminate`` output folder (``summary.json`` + ``documents/``) is read from
    its ``documents/`` subfolder only, so its removal log never leaks back into the corpus.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file():
        return [path]
    if (path / "summary.json").is_file() and (path / "documents").is_dir():
        path = path / "documents"
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(JSONL_SUFFIXES))
    if not files:
        raise ValueError(f"input folder {path} holds no {'/'.join(JSONL_SUFFIXES)} files")
    return files


def has_records(files: Iterable[Path]) -> bool:
    """Whether any of ``files`` holds a non-blank line."""
    for f in files:
        with open_text(f) as fh:
            if any(line.strip() for line in fh):
                return True
    return False


def iter_texts(files: Iterable[Path], text_key: str = "text") -> Iterator[str]:
    """The ``text_key`` field of every record; errors name the file and line."""
    for f in files:
        for lineno, record in iter_jsonl(f):
            if not isinstance(record, dict) or text_key not in record:
                raise ValueError(f"{f}:{lineno}: record has no {text_key!r} field")
            text = record[text_key]
            if not isinstance(text, str):
                raise ValueError(f"{f}:{lineno}: field {text_key!r} is not a string")
            yield text
