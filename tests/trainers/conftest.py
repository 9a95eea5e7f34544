"""Fixtures: tiny megatron indexed datasets and SFT files made from real GSM8K text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def _gsm8k(shared_data: Path, n: int, skip: int = 0) -> list[dict]:
    rows = []
    with (shared_data / "benchmarks" / "gsm8k" / "train.jsonl").open() as f:
        for i, line in enumerate(f):
            if i >= skip:
                rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, shared_data, neox_tokenizer_path) -> dict[str, Path]:
    """Two GSM8K shards: ``qa`` (question + worked answer) and ``answers`` (answers only)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = _gsm8k(shared_data, 240)
    qa = write_indexed(
        root / "qa", [r["question"] + "\n" + r["answer"] for r in rows[:160]], neox_tokenizer_path
    )
    ans = write_indexed(root / "answers", [r["answer"] for r in rows[160:]], neox_tokenizer_path)
    return {"qa": qa, "answers": ans, "root": root}


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory, shared_data) -> Path:
    """GSM8K as SFT JSON Lines: prompt/response rows plus a few chat rows."""
    path = tmp_path_factory.mktemp("sft") / "gsm8k_sft.jsonl"
    rows = _gsm8k(shared_data, 48, skip=1000)
    with path.open("w") as f:
        for i, r in enumerate(rows):
            if i % 4 == 3:
                item = {
                    "messages": [
                        {"role": "user", "content": r["question"]},
                        {"role": "assistant", "content": r["answer"]},
                    ]
                }
            else:
                item = {"prompt": r["question"] + "\n", "response": r["answer"]}
            f.write(json.dumps(item) + "\n")
    return path


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
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
        ]
    else:
        launcher = [sys.executable]
    cmd = launcher + ["-m", "dsm_engine.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def init_checkpoint(tmp_path_factory) -> Path:
    """Random tiny-model weights saved at TP=1/PP=1, so every layout starts from the same point."""
    from dsm_engine.models.build import build_model
    from dsm_engine.models.checkpoint import save_checkpoint
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import destroy_parallel, initialize_parallel

    root = tmp_path_factory.mktemp("init") / "ckpt"
    ctx = initialize_parallel(seed=1234)
    try:
        model = build_model(model_config("tiny", vocab_size=50304, seq_length=32), ctx)
        save_checkpoint(root, 0, model)
    finally:
        destroy_parallel()
    return root
