"""The loop's update of a method that keeps some rows only (RFT / Online RFT: the correct
samples; DPO: the groups with a correct and a wrong one) under data parallelism 2 (torchrun,
gloo): a rank that keeps no row still takes part, the step ends on both ranks with the same
gradients and parameters, and it equals one process's step over both ranks' rows (each rank's
gradient is weighted by its share of the kept rows or pairs, so unequal shares give the mean
over all of them, not the mean of the ranks' means)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _helpers import assert_same_adam_step, planned_scenario  # noqa: E402
from step_worker import initial_state, planned_step_outputs  # noqa: E402

MIXED = [1, 0, 1, 1, 0, 1, 0, 0]  # 4 correct samples; 3 + 3 (correct, wrong) pairs
CASES = {  # rank 0's rewards, rank 1's
    "rft_rank1_keeps_none": ("rft", [MIXED, [0] * 8]),
    "dpo_rank1_keeps_none": ("dpo", [MIXED, [0] * 8]),
    "rft_unequal": ("rft", [[1, 0, 1, 1, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0, 0, 0]]),
    "dpo_unequal": ("dpo", [MIXED, [1, 1, 1, 1, 0, 1, 0, 0]]),
    "rft_nobody_keeps": ("rft", [[0] * 8, [0] * 8]),
}


@pytest.fixture()
def parallel_teardown():
    yield
    from dsm_engine.models.parallel import destroy_parallel

    destroy_parallel()


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= 1e-5 * max(1.0, abs(want))


@pytest.mark.dist
def test_dp2_steps_with_a_rank_that_keeps_no_rows(tmp_path, torchrun, parallel_teardown):
    from dsm_engine.models.parallel import destroy_parallel

    state = initial_state(3)
    cases = {key: planned_scenario(algo, rewards) for key, (algo, rewards) in CASES.items()}
    torch.save({"state": state, "planned": {k: c[0] for k, c in cases.items()}}, tmp_path / "in")
    torchrun(HERE / "step_worker.py", tmp_path / "in", tmp_path / "out", 1, 1, timeout=300)
    ranks = [torch.load(tmp_path / f"out.rank{r}", weights_only=False) for r in (0, 1)]

    for key, (_, whole) in cases.items():
        one = planned_step_outputs(state, whole)
        destroy_parallel()
        first, second = ranks[0][key], ranks[1][key]
        skipped = key == "rft_nobody_keeps"
        for out in (first, second):
            assert out["metrics"]["update_skipped"] == float(skipped), key
        assert one["metrics"]["update_skipped"] == float(skipped), key
        if key.startswith("rft"):  # rank 1 keeps none where it says so
            assert (second["metrics"]["kept"] == 0) == ("none" in key or skipped), key
        else:
            assert second["metrics"]["dpo_pairs"] == (0 if "none" in key else 3), key
        # in sync: one averaged gradient, the same parameters
        for name, w in first["params"].items():
            assert torch.equal(w, second["params"][name]), (key, name)
            assert torch.equal(first["grads"][name], second["grads"][name]), (key, name)
        if skipped:
            assert all(torch.equal(w, state[name]) for name, w in first["params"].items())
            continue
        # ... and the step of one process over both ranks' rows
        assert _close(first["metrics"]["grad_norm"], one["metrics"]["grad_norm"]), key
        assert first["metrics"]["grad_norm"] > 0
        for name, g in one["grads"].items():
            msg = f"{key}: {name}"
            torch.testing.assert_close(first["grads"][name], g, rtol=1e-5, atol=5e-6, msg=msg)
            assert_same_adam_step(first["params"][name], one["params"][name], g, msg)
