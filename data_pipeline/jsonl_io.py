"""Finding and reading the JSON Lines document files that stages 8 and 9 consume.

Every read goes through :func:`dsm_engine.jsonl.iter_jsonl` and its bad-line rule: a line that is
not JSON, not an object, or has no string text field fails naming its file and line, or, with
``--skip-bad-lines`` (:class:`~dsm_engine.jsonl.BadLines` ``skip=True``), is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.io import DataFileLike, DataFolderLike
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from dsm_engine.jsonl import BadLines, iter_jsonl, open_text

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


def iter_records(
    files: Iterable[Path], text_key: str = "text", bad: BadLines | None = None
) -> Iterator[tuple[Path, int, dict]]:
    """``(file, line, record)`` of every document record: a JSON object whose ``text_key`` is a
    string; other lines go to ``bad`` (default: raise ``ValueError`` naming file and line)."""
    bad = bad if bad is not None else BadLines()
    for f in files:
        for lineno, record in iter_jsonl(f, bad=bad):
            if not isinstance(record, dict):
                bad.reject(f"{f}:{lineno}", "record is not a JSON object")
            elif not isinstance(record.get(text_key), str):
                missing = text_key not in record
                bad.reject(
                    f"{f}:{lineno}",
                    f"record has no {text_key!r} field"
                    if missing
                    else f"field {text_key!r} is not a string",
                )
            else:
                yield f, lineno, record


def iter_texts(
    files: Iterable[Path], text_key: str = "text", bad: BadLines | None = None
) -> Iterator[str]:
    """The ``text_key`` field of every record; bad lines go to ``bad`` (see :func:`iter_records`)."""
    for _, _, record in iter_records(files, text_key, bad):
        yield record[text_key]


def count_records(
    files: Iterable[Path], text_key: str = "text", bad: BadLines | None = None
) -> int:
    """How many document records ``files`` hold: one full read that finds every bad line first."""
    return sum(1 for _ in iter_records(files, text_key, bad))


class JsonlDocReader(BaseDiskReader):
    """datatrove reader of JSON Lines documents that follows the bad-line rule.

    datatrove's ``JsonlReader`` logs and drops a line that is not JSON and silently drops a
    record without text; this one fails the task naming the file and line, or with
    ``skip_bad_lines`` skips it, counts it (stat ``bad_lines``) and logs where it was.
    Records become documents as in ``JsonlReader`` (``id``, ``metadata``, other keys into
    metadata).
    """

    name = "🐿 Jsonl (checked lines)"

    def __init__(
        self,
        data_folder: DataFolderLike,
        paths_file: DataFileLike | None = None,
        text_key: str = "text",
        id_key: str = "id",
        skip_bad_lines: bool = False,
    ):
        super().__init__(
            data_folder,
            paths_file=paths_file,
            text_key=text_key,
            id_key=id_key,
            add_file_path=False,
        )
        self.skip_bad_lines = skip_bad_lines

    def read_file(self, filepath: str) -> DocumentsPipeline:
        bad = BadLines(skip=self.skip_bad_lines)
        path = Path(self.data_folder.resolve_paths(filepath))
        for _, lineno, record in iter_records([path], self.text_key, bad):
            with self.track_time():
                document = self.get_document_from_dict(record, filepath, lineno)
            if document:
                yield document
            else:
                self.stat_update("empty_text")
        if bad.count:
            self.stat_update("bad_lines", value=bad.count)
            logger.warning(bad.summary())
