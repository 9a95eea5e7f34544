"""RewardModelScorer input handling: bad positions fail before any model work (so every rank
of a model-parallel group fails alike), nothing to score returns empty lists, and rows longer
than the microbatch size split without changing any score."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def model():
    from dsm_engine.models import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
        model_config,
    )
    from dsm_engine.reward_models.model import build_reward_model

    ctx = initialize_parallel(ParallelConfig(), seed=4)
    m = build_reward_model(model_config("tiny", seq_length=32), ctx)
    with torch.no_grad():
        m.score_head.weight.normal_(0, 1.0)
    yield m.eval()
    destroy_parallel()


def test_positions_outside_a_row_are_named_before_scoring(model, monkeypatch):
    from dsm_engine.reward_models.scorer import RewardModelScorer

    scorer = RewardModelScorer(model, micro_batch_size=1)
    monkeypatch.setattr(scorer, "_score_one_stage", lambda *a: pytest.fail("model was run"))
    with pytest.raises(ValueError, match=r"row 1: positions \[3\] outside \[0, 3\)"):
        scorer.scores_at([[5, 6], [7, 8, 9]], [[1], [3]])
    with pytest.raises(ValueError, match="rows \\(1\\) and positions \\(2\\)"):
        scorer.scores_at([[5]], [[0], [0]])
    assert scorer.scores_at([[5, 6], [7]], [[], []]) == [[], []]
    assert scorer.scores_at([], []) == []


def test_microbatch_split_and_padding_do_not_change_scores(model):
    from dsm_engine.reward_models.scorer import RewardModelScorer

    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (4, 11, 7, 2, 9)]
    pos = [list(range(len(r))) for r in rows]
    alone = [
        RewardModelScorer(model, micro_batch_size=1).scores_at([r], [p])[0]
        for r, p in zip(rows, pos)
    ]
    batched = RewardModelScorer(model, micro_batch_size=2).scores_at(rows, pos)
    for a, b in zip(alone, batched):
        assert a == pytest.approx(b, abs=1e-6)
    assert len({round(v, 4) for s in batched for v in s}) > 5
