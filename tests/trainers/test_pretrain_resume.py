"""Exact resume: a run killed with SIGKILL and resumed with resume=auto reproduces the losses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainers_testlib import losses, pretrain_args

from dsm_engine.trainers.pretrain import main


@pytest.mark.slow
def test_sigkill_and_resume_auto_give_identical_losses(corpus, tmp_path):
    common = ("train.steps=8", "checkpoint.every=4")
    straight = tmp_path / "straight"
    assert main(pretrain_args(corpus, straight, *common)) == 0

    crashed = tmp_path / "crashed"
    script = Path(__file__).with_name("_killed_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    log = tmp_path / "crashed.log"
    with log.open("w") as out:
        # Own session: megatron's checkpoint writer starts a multiprocessing Manager that
        # outlives a SIGKILLed parent; its process group is cleaned up below.
        proc = subprocess.Popen(
            [sys.executable, str(script), "6", *pretrain_args(corpus, crashed, *common)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=240)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert len(losses(crashed)) == 6  # steps 5-6 ran after the checkpoint, then the kill

    assert main(pretrain_args(corpus, crashed, *common, "resume=auto")) == 0
    assert losses(crashed) == losses(straight)  # bit-identical, rows 5-6 replaced
