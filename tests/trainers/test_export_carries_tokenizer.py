"""A checkpoint of ``dsm train pretrain`` evaluates with ``dsm eval --model`` (issue 23, item 4):
the run keeps the tokenizer its shards were written with, and the export carries it."""

from __future__ import annotations

import pytest
from trainers_testlib import pretrain_args

from dsm_engine.cli import main as dsm


@pytest.mark.slow  # one pretraining step, an export in a fresh interpreter, a short eval
def test_eval_of_a_pretrained_checkpoint_finds_its_tokenizer(
    corpus, tmp_path, shared_data, neox_tokenizer_path
):
    run = tmp_path / "run"
    args = pretrain_args(corpus, run, "train.steps=1", "checkpoint.every=1")
    assert dsm(["train", "pretrain", *args, f"data.tokenizer={neox_tokenizer_path}"]) == 0
    argv = ["eval", "--model", str(run / "checkpoints"), "--out", str(tmp_path / "eval")]
    argv += ["--data-dir", str(shared_data / "benchmarks"), "--bench", "gsm8k", "--limit", "1"]
    assert dsm([*argv, "--max-new-tokens", "2"]) == 0
    export = tmp_path / "eval" / "hf_export"
    assert (export / "tokenizer.json").is_file() and (export / "tokenizer_config.json").is_file()
    assert (tmp_path / "eval" / "samples_gsm8k.jsonl").read_text().count("\n") == 1
