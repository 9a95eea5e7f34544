"""Vocabulary-parallel ops: TP=2 (torchrun, gloo, CPU) equals TP=1 in values and gradients."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("tp_worker.py")


@pytest.mark.dist
def test_tp2_equals_tp1(torchrun, monkeypatch):
    seed = random.randrange(2**31)  # fresh inputs every run; printed on failure
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    print(f"seed {seed}")  # shown with the failure
    proc = torchrun(WORKER, seed, timeout=600)
    out = proc.stdout + proc.stderr
    for rank in (0, 1):
        for impl in ("triton", "torch"):
            assert f"rank {rank}: {impl} TP=2 equals TP=1" in out
