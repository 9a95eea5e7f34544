"""Replay mixing (exact 10% when the batch allows, 10% in expectation otherwise) and the
reward-model metrics (AUC with ties against the pairwise definition)."""

from __future__ import annotations

import math
import random

import pytest

from dsm_engine.reward_models.metrics import accuracy, auc, auc_bruteforce
from dsm_engine.reward_models.replay import MixedBatcher, ReplayBuffer, mixed_batch_counts


def _batcher(ratio=0.1, seed=0):
    buf = ReplayBuffer(capacity=1000, seed=1)
    buf.add([("old", i) for i in range(50)])
    return MixedBatcher([("new", i) for i in range(37)], buf, ratio, seed=seed)


@pytest.mark.parametrize("batch_size", [10, 20, 30, 100])
def test_historical_share_is_exactly_ten_percent_when_batch_allows(batch_size):
    b = _batcher()
    for _ in range(50):
        rows = b.next_batch(batch_size)
        assert len(rows) == batch_size
        hist = sum(h for _, h in rows)
        assert hist == batch_size // 10
        assert all((r[0] == "old") == h for r, h in rows)


@pytest.mark.parametrize("batch_size", [7, 16, 25])
def test_historical_share_is_ten_percent_in_expectation(batch_size):
    b = _batcher(seed=3)
    n_batches = 4000
    hist = [sum(h for _, h in b.next_batch(batch_size)) for _ in range(n_batches)]
    want = batch_size * 0.1
    # every batch is one of the two nearest counts
    assert set(hist) <= {math.floor(want), math.ceil(want)}
    share = sum(hist) / (n_batches * batch_size)
    p = want - math.floor(want)  # Bernoulli per batch
    se = math.sqrt(p * (1 - p) / n_batches) / batch_size
    assert abs(share - 0.1) < 4 * se + 1e-12


def test_no_history_means_all_new_and_counts_helper():
    b = MixedBatcher([1, 2, 3], ReplayBuffer(10), 0.1)
    assert all(not h for _, h in b.next_batch(20))
    rng = random.Random(0)
    assert mixed_batch_counts(20, 0.1, rng) == (18, 2)
    assert mixed_batch_counts(20, 0.0, rng) == (20, 0)


def test_replay_buffer_state_round_trip_and_reservoir():
    buf = ReplayBuffer(capacity=100, seed=5)
    buf.add(list(range(1000)))
    assert len(buf) == 100 and buf.seen == 1000
    # reservoir: a uniform sample of everything added (mean ~ 500)
    assert 350 < sum(buf.items) / 100 < 650
    other = ReplayBuffer(capacity=1)
    other.load_state_dict(buf.state_dict())
    assert other.items == buf.items and other.sample(5) == buf.sample(5)


def test_auc_matches_pairwise_definition_with_ties():
    rng = random.Random(0)
    for trial in range(30):
        n = rng.randint(2, 60)
        scores = [round(rng.gauss(0, 1), 1 if trial % 2 else 3) for _ in range(n)]  # many ties
        labels = [float(rng.random() < 0.4) for _ in range(n)]
        if len(set(labels)) < 2:
            labels[0], labels[1] = 0.0, 1.0
        assert auc(scores, labels) == pytest.approx(auc_bruteforce(scores, labels), abs=1e-12)
    assert auc([1, 1, 1], [0, 1, 1]) == 0.5
    assert auc([0.1, 0.9], [0, 1]) == 1.0 and auc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(auc([1, 2], [1, 1]))
    assert accuracy([-1.0, 2.0, 0.5, -0.2], [0, 1, 0, 0]) == 0.75
