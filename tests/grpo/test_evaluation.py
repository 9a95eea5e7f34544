"""Held-out evaluation: greedy accuracy is the fraction of prompts whose one greedy response
is correct; sampled accuracy the fraction of ``samples`` responses per prompt that are, drawn
at the rollout temperature with the seed it is given."""

from __future__ import annotations

import pytest

from dsm_engine.grpo import sampling
from dsm_engine.grpo.data import Prompt
from dsm_engine.rollout.base import RolloutBatch


class _Codec:
    eos_id = 0

    @staticmethod
    def decode(ids: list[int]) -> str:
        return str(ids[0])


class _ExactMatch:
    def score(self, prompts, outputs, golds):
        return [float(out == gold) for out, gold in zip(outputs, golds)]


class _Engine:
    """Prompt ``i``'s response ``j`` is its gold answer for ``j < right[i]``, else wrong."""

    def __init__(self, right: list[int]):
        self.right = right
        self.params = []

    def generate(self, prompts_token_ids, n, params):
        self.params.append((n, params))
        rows = [(i, j) for i in range(len(prompts_token_ids)) for j in range(n)]
        ids = [[i if j < self.right[i] else 99] for i, j in rows]
        return RolloutBatch(ids, [[0.0]] * len(rows), [True] * len(rows), [i for i, _ in rows])


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.setattr(sampling, "_mp_broadcast", lambda obj: obj)


PROMPTS = [Prompt(text=f"q{i}", gold=str(i), token_ids=[1, i]) for i in range(4)]


def test_sampled_accuracy_is_the_mean_over_every_sample_of_every_prompt():
    engine = _Engine(right=[0, 1, 3, 4])
    got = sampling.evaluate_sampled(
        engine,
        _ExactMatch(),
        _Codec(),
        PROMPTS,
        samples=4,
        max_new_tokens=5,
        temperature=0.7,
        seed=3,
    )
    assert got == pytest.approx((0 + 1 + 3 + 4) / 16)
    n, params = engine.params[0]
    assert n == 4 and not params.greedy
    assert (params.temperature, params.seed, params.max_new_tokens) == (0.7, 3, 5)
    assert params.stop_token_ids == [_Codec.eos_id]


def test_greedy_accuracy_takes_one_greedy_response_per_prompt():
    engine = _Engine(right=[0, 1, 3, 0])
    got = sampling.evaluate_greedy(
        engine, _ExactMatch(), _Codec(), PROMPTS, max_new_tokens=5, temperature=1.0
    )
    assert got == pytest.approx(2 / 4)
    n, params = engine.params[0]
    assert n == 1 and params.greedy
