"""Fixtures: tiny megatron indexed datasets and SFT files made from real GSM8K text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainers_testlib import write_indexed


def _gsm8k(shared_data: Path, n: int, skip: int = 0) -> list[dict]:
    rows = []
    with (shared_data / "benchmarks" / "gsm8k" / "train.jsonl").open() as f:
        for i, line in enumerate(f):
            if i >= skip:
                rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


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
