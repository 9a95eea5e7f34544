"""Helpers shared by the trainer tests (tiny run arguments, indexed shards, subprocess runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def write_indexed(prefix: Path, texts: list[str], tokenizer_path: Path) -> Path:
    """Tokenise ``texts`` (one document each, EOD appended) into ``prefix.bin/.idx``."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    eod = tok.token_to_id("<|endoftext|>")
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for text in texts:
        builder.add_item(torch.tensor(tok.encode(text).ids + [eod]))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")
    return prefix


TINY = [
    "model.preset=tiny",
    "model.vocab_size=50304",
    "model.seq_length=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def pretrain_args(corpus: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    """Arguments of a tiny CPU pretraining run on the GSM8K shards."""
    return [
        "--config",
        str(Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu-pretrain.yaml"),
        f"data.paths=[{corpus['qa']},{corpus['answers']}]",
        "data.weights=[0.7,0.3]",
        f"run_dir={run_dir}",
        *TINY,
        *extra,
    ]


def losses(run_dir: Path) -> list[float]:
    """The per-step losses recorded in a run folder's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], nproc: int = 1, timeout: int = 240, **kw):
    """Run ``dsm <args>`` in a subprocess (under torchrun when ``nproc > 1``)."""
    import os
    import subprocess

    from dsm_engine.procs import python_argv, torchrun_argv

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc > 1:
        options = ("--master_port", str(free_port()))
        cmd = torchrun_argv(nproc, *args, torchrun_options=options)
    else:
        cmd = python_argv("-m", "dsm_engine.cli", *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
