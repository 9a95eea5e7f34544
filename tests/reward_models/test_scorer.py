"""ORM/PRM rewards behind the RewardFn protocol read the reward model at the right tokens."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.rewards import RewardFn


class Codec:
    bos_id = 1

    def encode(self, text):
        return [3 + ord(c) % 200 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 3) if 0 < i - 3 < 128 else "?" for i in ids)


@pytest.fixture(scope="module")
def model():
    from dsm_engine.models import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
        model_config,
    )
    from dsm_engine.reward_models.model import build_reward_model

    ctx = initialize_parallel(ParallelConfig(), seed=2)
    m = build_reward_model(model_config("tiny", seq_length=64), ctx)
    with torch.no_grad():
        m.score_head.weight.normal_(0, 1.0)
    yield m.eval()
    destroy_parallel()


def test_orm_and_prm_rewards_score_last_token_and_steps(model):
    from dsm_engine.reward_models.model import reward_scores
    from dsm_engine.reward_models.scorer import ORMReward, PRMReward, RewardModelScorer

    codec = Codec()
    scorer = RewardModelScorer(model, micro_batch_size=2)
    orm, prm = ORMReward(scorer, codec), PRMReward(scorer, codec, delimiter="\n")
    assert isinstance(orm, RewardFn) and isinstance(prm, RewardFn)
    prompts = ["Q: 1+1?", "Q: 2+2?", "Q: 3*3?"]
    outputs = ["1+1=2\nanswer 2", "4", "3*3=9\n9\nanswer 9\n"]
    got_orm = orm.score(prompts, outputs, ["2", "4", "9"])
    got_prm = prm.score(prompts, outputs, ["2", "4", "9"])
    with torch.no_grad():
        for i, (p, o) in enumerate(zip(prompts, outputs)):
            row = [1, *codec.encode(p), *codec.encode(o)]
            probs = torch.sigmoid(reward_scores(model, torch.tensor([row])))[0]
            assert got_orm[i] == pytest.approx(float(probs[-1]), abs=1e-6)
            lp = 1 + len(codec.encode(p))
            text = o
            ends = [j for j, c in enumerate(text) if c == "\n"]
            ends = [e for e in ends] if text.endswith("\n") else [*ends, len(text) - 1]
            want = min(float(probs[lp + e]) for e in ends)
            assert got_prm[i] == pytest.approx(want, abs=1e-6)


# Input handling: bad positions fail before any model work (so every rank of a model-parallel
# group fails alike), nothing to score returns empty lists, microbatch splits change no score.


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


def test_mean_scorer_averages_its_members_position_by_position(model):
    from dsm_engine.reward_models.scorer import MeanScorer, RewardModelScorer

    class Fixed:
        """A member that scores position p of row i as ``offset + i + p / 100``."""

        def __init__(self, offset):
            self.offset = offset

        def scores_at(self, rows, positions):
            return [[self.offset + i + p / 100 for p in ps] for i, ps in enumerate(positions)]

    rows, positions = [[5, 6, 7], [8, 9]], [[0, 2], [1]]
    got = MeanScorer([Fixed(0.1), Fixed(0.3), Fixed(0.8)]).scores_at(rows, positions)
    assert [len(r) for r in got] == [2, 1]
    assert [v for r in got for v in r] == pytest.approx([0.4, 0.42, 1.41])
    # A one-member ensemble is that member.
    real = RewardModelScorer(model, micro_batch_size=2)
    assert MeanScorer([real]).scores_at(rows, positions) == real.scores_at(rows, positions)
    with pytest.raises(ValueError, match="at least one member"):
        MeanScorer([])
