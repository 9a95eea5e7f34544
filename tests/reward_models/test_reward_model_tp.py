"""A reward model at TP=2 (with and without sequence parallelism) equals TP=1: same scores,
same PRM loss, same gradients for every tensor including the replicated score head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("tp_worker.py")


@pytest.mark.dist
def test_tp2_equals_tp1(tmp_path, torchrun):
    out = tmp_path / "result.json"
    torchrun(WORKER, "--out", out, "--ckpt", tmp_path / "ckpt", timeout=300)
    r = json.loads(out.read_text())
    assert r["head_grad_norm"] > 0 and r["num_tensors"] > 10
    for key in ("score_diff_tp2", "score_diff_sp"):
        assert r[key] < 1e-5, r
    for key in ("loss_diff_tp2", "loss_diff_sp"):
        assert r[key] < 1e-6, r
    for key in ("grad_diff_tp2", "grad_diff_sp"):
        assert r[key] < 1e-5, r
