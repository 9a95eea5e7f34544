"""The trainers' MFU uses the same FLOP formula as the model benchmark."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dsm_engine.models.config import model_config
from dsm_engine.trainers.flops import train_flops_per_token


def _bench_model():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train" / "bench_model.py"
    spec = importlib.util.spec_from_file_location("bench_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["deepseekmath-7b", "dsm-1b", "tiny-gqa"])
def test_same_flop_formula_as_the_model_benchmark(preset):
    cfg = model_config(preset)
    for seq in (512, cfg.seq_length):
        assert train_flops_per_token(cfg, seq) == _bench_model().flops_per_token(cfg, seq)


def test_7b_costs_about_six_times_its_parameters_per_token():
    cfg = model_config("deepseekmath-7b")
    assert 6 * 6.5e9 < train_flops_per_token(cfg) < 6 * 8.5e9
