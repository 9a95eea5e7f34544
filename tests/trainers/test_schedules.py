"""The learning-rate schedules follow their formulas."""

from __future__ import annotations

import math

import pytest

from dsm_engine.config import ConfigError
from dsm_engine.trainers.schedules import ScheduleConfig, lr_at


def test_multistep_is_the_papers_schedule():
    cfg = ScheduleConfig(name="multistep", lr=4.2e-4, warmup_steps=2000)
    total = 100_000
    # linear warm-up to the peak over 2,000 steps
    assert lr_at(cfg, 0, total) == pytest.approx(4.2e-4 / 2000)
    assert lr_at(cfg, 999, total) == pytest.approx(4.2e-4 * 1000 / 2000)
    assert lr_at(cfg, 1999, total) == pytest.approx(4.2e-4)
    # the peak until 80% of training
    assert lr_at(cfg, 2000, total) == pytest.approx(4.2e-4)
    assert lr_at(cfg, 79_999, total) == pytest.approx(4.2e-4)
    # 31.6% of the peak from 80%, 10% from 90%
    assert lr_at(cfg, 80_000, total) == pytest.approx(4.2e-4 * 0.316)
    assert lr_at(cfg, 89_999, total) == pytest.approx(4.2e-4 * 0.316)
    assert lr_at(cfg, 90_000, total) == pytest.approx(4.2e-4 * 0.1)
    assert lr_at(cfg, total - 1, total) == pytest.approx(4.2e-4 * 0.1)


def test_multistep_warmup_is_configurable():
    cfg = ScheduleConfig(name="multistep", lr=1.0, warmup_steps=4)
    assert [lr_at(cfg, s, 10) for s in range(10)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 0.316, 0.1]
    )


def test_cosine_decays_from_peak_to_min():
    cfg = ScheduleConfig(name="cosine", lr=2.0, warmup_steps=10, min_lr_ratio=0.1)
    total = 110
    assert lr_at(cfg, 9, total) == pytest.approx(2.0)
    assert lr_at(cfg, 10, total) == pytest.approx(2.0)
    assert lr_at(cfg, total - 1, total) == pytest.approx(0.2)
    for s in range(10, total):
        progress = (s - 10) / (total - 10 - 1)
        expected = 0.2 + 0.5 * (2.0 - 0.2) * (1 + math.cos(math.pi * progress))
        assert lr_at(cfg, s, total) == pytest.approx(expected)


def test_constant_after_warmup():
    cfg = ScheduleConfig(name="constant", lr=5e-5, warmup_steps=0)
    assert {lr_at(cfg, s, 50) for s in range(50)} == {5e-5}


def test_bad_schedule_fields_are_named():
    with pytest.raises(ConfigError, match="schedule.factors"):
        ScheduleConfig(milestones=[0.8], factors=[0.3, 0.1])
    with pytest.raises(ConfigError, match="schedule.lr"):
        ScheduleConfig(lr=0.0)
