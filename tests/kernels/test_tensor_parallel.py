"""Vocabulary-parallel ops: TP=2 (torchrun, gloo, CPU) equals TP=1 in values and gradients."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("tp_worker.py")


@pytest.mark.dist
def test_tp2_equals_tp1():
    seed = random.randrange(2**31)  # fresh inputs every run; printed on failure
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"seed {seed}:\n{out[-6000:]}"
    for rank in (0, 1):
        for impl in ("triton", "torch"):
            assert f"rank {rank}: {impl} TP=2 equals TP=1" in out
