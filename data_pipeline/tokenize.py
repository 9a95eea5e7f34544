"""Stage 9: JSON Lines documents -> megatron-core indexed dataset (``PREFIX.bin`` / ``PREFIX.idx``).

Each document becomes one sequence (and one megatron "document") of token ids from a
Hugging Face ``tokenizers`` ``tokenizer.json``, encoded without special tokens and followed by
the end-of-document token unless ``append_eod=False``. Documents with empty text are skipped
and counted. The token dtype is megatron's own choice for the vocabulary size
(``DType.optimal_dtype``: uint16 below 65,500 ids, else int32).

Python: ``tokenize_jsonl(inputs, tokenizer_path, out_prefix)`` returns :class:`TokenizeStats`;
``IndexedDataset(out_prefix)`` then serves the token arrays to the pretraining trainer.
Command: ``dsm data tokenize --input A.jsonl [B/ ...] --tokenizer tokenizer.json --out PREFIX``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dsm_engine.data_pipeline.jsonl_io import has_records, iter_texts, jsonl_files
from dsm_engine.jsonl import SKIP_HINT, BadLines
from dsm_engine.text_codec import END_TOKENS

EOD_CANDIDATES = END_TOKENS  # the engine's one list of end-token spellings


@dataclass
class TokenizeStats:
    """What :func:`tokenize_jsonl` wrote."""

    documents: int  # documents written (one sequence each)
    skipped_empty: int  # documents whose text was empty
    tokens: int  # tokens written, EOD included
    vocab_size: int
    eod_id: int | None  # None when append_eod=False
    dtype: str  # numpy dtype of the .bin file
    bin_path: str
    idx_path: str
    files: list[str]
    bad_lines: int = 0  # lines skipped with skip_bad_lines (not JSON, no string text field)
    bad_line_examples: list[str] = field(default_factory=list)  # the first ones, "file:line: why"


def load_tokenizer(tokenizer_path: str | Path):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (or a folder holding one)."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust loader raises a bare Exception
        raise ValueError(f"tokenizer file {path} could not be loaded: {e}") from e


def eod_token_id(tokenizer, eod_token: str | None = None) -> int:
    """Id of ``eod_token``, or of the first of :data:`EOD_CANDIDATES` the vocabulary holds."""
    candidates = (eod_token,) if eod_token else EOD_CANDIDATES
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ValueError(
        f"tokenizer has no end-of-document token (tried {', '.join(candidates)}); "
        "name one with eod_token= / --eod-token"
    )


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_jsonl(
    inputs: str | Path | Sequence[str | Path],
    tokenizer_path: str | Path,
    out_prefix: str | Path,
    *,
    text_key: str = "text",
    append_eod: bool = True,
    eod_token: str | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    skip_bad_lines: bool = False,
) -> TokenizeStats:
    """Tokenises every record of ``inputs`` into ``out_prefix.bin`` / ``out_prefix.idx``.

    ``inputs``: ``.jsonl[.gz|.zst]`` files and/or folders of them (a ``dsm data decontaminate``
    output folder is read from its ``documents/``). Raises FileNotFoundError / ValueError naming
    the missing file, the bad line, or the input that holds no records, and then leaves no
    output; with ``skip_bad_lines`` bad lines are skipped and counted (``bad_lines``) instead.
    """
    from megatron.core.datasets.indexed_dataset import (
        DType,
        IndexedDatasetBuilder,
        get_bin_path,
        get_idx_path,
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no inputs given")
    files = [f for item in inputs for f in jsonl_files(item)]
    if not has_records(files):
        raise ValueError(f"inputs {', '.join(map(str, inputs))} hold no records")
    tokenizer = load_tokenizer(tokenizer_path)
    eod = eod_token_id(tokenizer, eod_token) if append_eod else None
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = DType.optimal_dtype(vocab_size)

    out_prefix = str(out_prefix)
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    bin_path, idx_path = get_bin_path(out_prefix), get_idx_path(out_prefix)
    builder = IndexedDatasetBuilder(bin_path, dtype=dtype)
    bad = BadLines(skip=skip_bad_lines, hint=SKIP_HINT)
    documents = skipped = tokens = 0
    try:
        with Progress(
            TextColumn("[bold]tokenise[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[docs]:,} docs, {task.fields[tokens]:,} tokens"),
            disable=not progress,
            transient=True,
        ) as bar:
            task = bar.add_task("files", total=len(files), docs=0, tokens=0)
            for f in files:
                bar.update(task, description=f.name)
                for batch in _batches(iter_texts([f], text_key, bad), batch_size):
                    kept = [t for t in batch if t]
                    skipped += len(batch) - len(kept)
                    for encoding in tokenizer.encode_batch(kept, add_special_tokens=False):
                        ids = encoding.ids + [eod] if eod is not None else encoding.ids
                        if not ids:  # a text the tokenizer maps to nothing
                            skipped += 1
                            continue
                        builder.add_document(np.asarray(ids, dtype=dtype), [len(ids)])
                        documents += 1
                        tokens += len(ids)
                    bar.update(task, docs=documents, tokens=tokens)
                bar.advance(task)
    except BaseException:  # a bad line, or an interrupt: leave no half-written dataset
        builder.finalize(idx_path)  # closes the .bin
        Path(bin_path).unlink(missing_ok=True)
        Path(idx_path).unlink(missing_ok=True)
        raise
    builder.finalize(idx_path)
    if documents == 0:
        Path(bin_path).unlink(missing_ok=True)
        Path(idx_path).unlink(missing_ok=True)
        raise ValueError(f"inputs {', '.join(map(str, inputs))} hold no non-empty texts")
    return TokenizeStats(
        documents=documents,
        skipped_empty=skipped,
        tokens=tokens,
        vocab_size=vocab_size,
        eod_id=eod,
        dtype=np.dtype(dtype).name,
        bin_path=bin_path,
        idx_path=idx_path,
        files=[str(f) for f in files],
        bad_lines=bad.count,
        bad_line_examples=bad.named,
    )


def main(argv: list[str]) -> int:
    """``dsm data tokenize``."""
    parser = argparse.ArgumentParser(
        prog="dsm data tokenize",
        description="Tokenise JSON Lines documents into a megatron-core .bin/.idx dataset.",
    )
    parser.add_argument("--input", nargs="+", required=True, help=".jsonl[.gz] files or folders")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json (or its folder)")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.bin, PREFIX.idx")
    parser.add_argument(
        "--append-eod",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the end-of-document token to each document (default: on)",
    )
    parser.add_argument("--eod-token", default=None, help="end-of-document token (default: auto)")
    parser.add_argument("--text-key", default="text")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) lines that are not JSON objects with a string text field",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        stats = tokenize_jsonl(
            args.input,
            args.tokenizer,
            args.out,
            text_key=args.text_key,
            append_eod=args.append_eod,
            eod_token=args.eod_token,
            progress=not args.no_progress,
            skip_bad_lines=args.skip_bad_lines,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"dsm data tokenize: error: {e}", file=sys.stderr)
        return 2
    if stats.bad_lines:
        named = "; ".join(stats.bad_line_examples)
        print(
            f"dsm data tokenize: warning: skipped {stats.bad_lines} bad line(s): {named}",
            file=sys.stderr,
        )
    print(json.dumps(asdict(stats), indent=2))
    return 0
