"""Exact resume: a run killed with SIGKILL and resumed with resume=auto reproduces the losses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsm_engine.trainers.pretrain import main
from tests.trainers.conftest import losses, pretrain_args


@pytest.mark.slow
def test_sigkill_and_resume_auto_give_identical_losses(corpus, tmp_path):
    common = ("train.steps=20", "checkpoint.every=10")
    straight = tmp_path / "straight"
    assert main(pretrain_args(corpus, straight, *common)) == 0

    crashed = tmp_path / "crashed"
    script = Path(__file__).with_name("_killed_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), "13", *pretrain_args(corpus, crashed, *common)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_0000010"
    assert len(losses(crashed)) == 13  # steps 11-13 ran after the checkpoint, then the kill

    assert main(pretrain_args(corpus, crashed, *common, "resume=auto")) == 0
    assert losses(crashed) == losses(straight)  # bit-identical, rows 11-13 replaced
