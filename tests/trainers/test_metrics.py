"""MetricsLogger: JSON Lines rows, TensorBoard events, resume truncation, throughput/MFU."""

from __future__ import annotations

import json

import pytest

from dsm_engine.trainers.metrics import MetricsLogger, throughput


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_and_tensorboard_are_written(tmp_path):
    with MetricsLogger(tmp_path, total_steps=3, progress=False) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 4.0 - step, "lr": 1e-3, "skip": None})
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["loss"] == 1.0 and "skip" not in rows[0]
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, total_steps=5, progress=False, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill mid-write
    with MetricsLogger(
        tmp_path, total_steps=5, start_step=3, progress=False, tensorboard=False
    ) as log:
        log.log(4, {"loss": 40.0})
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_disabled_logger_writes_nothing(tmp_path):
    with MetricsLogger(tmp_path / "r", total_steps=1, enabled=False) as log:
        log.log(1, {"loss": 1.0})
    assert not (tmp_path / "r").exists()


def test_throughput_and_mfu():
    out = throughput(4096, 2.0, flops_per_token=6e9, num_devices=2, peak_flops=1e12)
    assert out["tokens_per_s"] == 2048 and out["tokens_per_s_per_device"] == 1024
    assert out["mfu"] == pytest.approx(1024 * 6e9 / 1e12)
    assert "mfu" not in throughput(10, 1.0, flops_per_token=1.0, peak_flops=None)
