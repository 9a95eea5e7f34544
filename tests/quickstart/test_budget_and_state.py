"""Sizes behind --minutes, and the stage markers that make a run resumable (fast)."""

from __future__ import annotations

import json

import pytest

from dsm_engine.config import ConfigError
from dsm_engine.quickstart.budget import PRESETS, budget_for
from dsm_engine.quickstart.state import QuickstartError, RunState


def test_presets_are_returned_for_their_own_minutes():
    for minutes, preset in PRESETS.items():
        assert budget_for(minutes) == preset


def test_more_minutes_never_means_less_work():
    budgets = [budget_for(m) for m in (0.5, 1, 2, 3, 5, 9, 10, 15, 30)]
    for small, big in zip(budgets, budgets[1:]):
        for name in ("pretrain_steps", "grpo_steps", "heldout_problems", "gsm8k_limit"):
            assert getattr(small, name) <= getattr(big, name), name
    assert budgets[0].pretrain_steps >= 1 and budgets[0].grpo_steps >= 1


def test_a_non_positive_budget_is_refused():
    with pytest.raises(ConfigError, match="--minutes"):
        budget_for(0)


def test_markers_record_finished_stages_only(tmp_path):
    state = RunState(tmp_path / "run")
    assert not state.check_settings({"minutes": 3.0})
    assert state.done("data") is None
    state.mark("data", wall_s=1.5, cpu_s=2.0, info={"kept": 7})
    assert state.done("data")["info"] == {"kept": 7}
    assert [p.name for p in state.stages_dir.iterdir()] == ["data.done.json"]  # no temp files
    assert json.loads(state.marker("data").read_text())["wall_s"] == 1.5


def test_a_rerun_must_use_the_same_settings(tmp_path):
    RunState(tmp_path / "run").check_settings({"minutes": 3.0, "data_dir": "/d"})
    assert RunState(tmp_path / "run").check_settings({"minutes": 3.0, "data_dir": "/d"})
    with pytest.raises(QuickstartError, match="minutes"):
        RunState(tmp_path / "run").check_settings({"minutes": 15.0, "data_dir": "/d"})


def test_a_folder_holding_something_else_is_not_used(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(QuickstartError, match="not empty"):
        RunState(tmp_path / "other").check_settings({"minutes": 3.0})
    assert not (tmp_path / "other" / "quickstart.json").exists()
