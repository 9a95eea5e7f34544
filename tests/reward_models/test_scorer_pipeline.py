"""The reward-model scorer at PP=2 (forward-only pipeline schedule, scores broadcast from the
last stage) and at TP=2 with sequence parallelism returns, on every rank, the PP=1 scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("scorer_pp_worker.py")


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_scores_at_equal_pp1_on_every_rank(tmp_path, monkeypatch, torchrun):
    monkeypatch.syspath_prepend(str(WORKER.parent))
    from scorer_pp_worker import LENGTHS, MICRO_BATCH, rows_and_positions

    torchrun(WORKER, tmp_path, timeout=300)
    assert len(LENGTHS) > MICRO_BATCH and len(set(LENGTHS)) == len(LENGTHS)
    _, orm_pos, prm_pos = rows_and_positions()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    want = ranks[0]["pp1"]
    assert ranks[1]["pp1"] == want  # dp=2: both ranks hold the whole model
    for kind, pos in (("orm", orm_pos), ("prm", prm_pos)):
        assert [len(s) for s in want[kind]] == [len(p) for p in pos]
        flat = [v for s in want[kind] for v in s]
        assert all(0.0 < v < 1.0 for v in flat) and max(flat) - min(flat) > 1e-3
        for layout in ("pp2", "tp2_sp"):
            for r, got in enumerate(ranks):
                rows = got[layout][kind]
                assert [len(s) for s in rows] == [len(p) for p in pos], (layout, r)
                diff = max(abs(a - b) for s, w in zip(rows, want[kind]) for a, b in zip(s, w))
                assert diff < 1e-5, (layout, kind, r, diff)
    # Both pipeline stages return the very same list (broadcast, not recomputed).
    assert ranks[0]["pp2"] == ranks[1]["pp2"]
