"""Learned-reward GRPO at pp=2: a reward model split over two pipeline stages scores the
rollouts (forward-only pipeline schedule), a 2-step outcome-supervised run finishes with finite
metrics, and the iteration boundary retrains the reward model at pp=2 and switches to it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_orm_supervised_grpo_runs_and_refreshes_the_reward_model(tmp_path, torchrun):
    from dsm_engine.models.checkpoint import latest_checkpoint
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    paths = DemoPaths(tmp_path)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 40), paths.train)
    out = tmp_path / "history.json"
    torchrun(HERE / "pp_orm_worker.py", tmp_path, out)
    history = json.loads(out.read_text())

    assert len(history) == 2
    for row in history:
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, bad
        assert 0.0 < row["rm_score"] < 1.0  # the mean learned score the advantages came from
        assert row["response_len_mean"] > 0
    assert "rm_loss" not in history[0]
    assert "rm_loss" in history[1] and history[1]["rm_rows"] > 0  # retrained at the boundary
    new_rm = latest_checkpoint(
        tmp_path / "run" / "reward_model" / "iter_001" / "run" / "checkpoints"
    )
    assert new_rm is not None and new_rm.name == "step_0000002"
