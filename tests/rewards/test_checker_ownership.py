"""Who owns the math-verify workers: whoever created the checker, never the process."""

from __future__ import annotations

import gc
import os

import pytest

import dsm_engine.rewards.checker as checker_module
from dsm_engine.rewards import VerifierConfig, VerifierReward, grade_batch, is_equivalent
from dsm_engine.rewards.equivalence import EquivalenceConfig, SymbolicChecker

NEEDS_MATH_VERIFY = ("\\frac{x^2-1}{x-1}", "x+1")  # undecided by the quick tier


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child stays a zombie until reaped; Popen.wait in stop() reaps it
    return True


def test_there_is_no_process_wide_checker():
    assert not hasattr(checker_module, "get_checker")
    assert not any(isinstance(v, SymbolicChecker) for v in vars(checker_module).values())


def test_a_checker_block_stops_its_workers():
    with SymbolicChecker(EquivalenceConfig(timeout_s=10.0)) as checker:
        assert is_equivalent(*NEEDS_MATH_VERIFY, checker=checker)
        pids = checker.worker_pids
        assert len(pids) == 1 and _alive(pids[0])
    assert checker.worker_pids == []
    assert not _alive(pids[0])


def test_a_dropped_checker_stops_its_workers_when_collected():
    checker = SymbolicChecker(EquivalenceConfig(timeout_s=10.0))
    checker.start()
    (pid,) = checker.worker_pids
    del checker
    gc.collect()
    assert not _alive(pid)


def test_the_one_call_api_starts_and_stops_a_checker_of_its_own(monkeypatch):
    made: list[SymbolicChecker] = []
    real_init = SymbolicChecker.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(SymbolicChecker, "__init__", spy)
    grades = grade_batch(["\\boxed{x+1}"], ["\\boxed{\\frac{x^2-1}{x-1}}"], "math")
    assert grades[0].correct
    assert len(made) == 1 and made[0].checks == 1
    assert made[0].worker_pids == []  # stopped before grade_batch returned


def test_a_reward_closes_the_checker_it_owns_and_leaves_a_given_one_running():
    golds = ["\\boxed{\\frac{x^2-1}{x-1}}"]
    with VerifierReward(VerifierConfig(kind="math", timeout_s=10.0)) as owned:
        assert owned.score(["q"], ["\\boxed{x+1}"], golds) == [1.0]
        assert len(owned.checker.worker_pids) == 1
    assert owned.checker.worker_pids == []

    with SymbolicChecker(EquivalenceConfig(timeout_s=10.0)) as mine:
        with VerifierReward(VerifierConfig(kind="math"), checker=mine) as reward:
            assert reward.score(["q"], ["\\boxed{x+1}"], golds) == [1.0]
        assert len(mine.worker_pids) == 1  # still the caller's, still warm


@pytest.mark.parametrize("timeout_s, workers", [(5.0, 1), (2.0, 2)])
def test_a_reward_builds_its_checker_from_its_config(timeout_s, workers):
    with VerifierReward(VerifierConfig(timeout_s=timeout_s, num_workers=workers)) as reward:
        assert reward.checker.config.timeout_s == timeout_s
        assert reward.checker.config.num_workers == workers
