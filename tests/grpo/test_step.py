"""One GRPO step on a tiny megatron-core policy equals the paper's formula written out in
float64, and TP=2 equals TP=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _helpers import TINY, paper_objective_fp64, random_batch  # noqa: E402
from step_worker import BETA, EPS, GROUP, TEMP, grpo_step_outputs, initial_state  # noqa: E402


@pytest.fixture()
def parallel_teardown():
    yield
    from dsm_engine.models.parallel import destroy_parallel

    destroy_parallel()


def test_grpo_step_equals_paper_formula_fp64(parallel_teardown):
    from dsm_engine.models.config import model_config

    state = initial_state(0)
    batch = random_batch(seed=3, groups=3, group_size=GROUP)
    out = grpo_step_outputs(state, batch, tp=1)
    adv, loss, grads = paper_objective_fp64(
        state,
        model_config(TINY),
        batch,
        out["old"],
        out["ref"],
        group_size=GROUP,
        eps=EPS,
        beta=BETA,
        temperature=TEMP,
    )
    assert out["metrics"]["clip_frac_low"] > 0 and out["metrics"]["clip_frac_high"] > 0
    assert torch.equal(out["adv"][:GROUP], torch.zeros(GROUP))  # the all-equal group
    torch.testing.assert_close(out["adv"].double(), adv, rtol=1e-5, atol=1e-6)
    assert abs(out["loss"] - float(loss)) <= 1e-5 * max(1.0, abs(float(loss)))
    assert set(out["grads"]) == set(grads)
    for name, g in grads.items():
        torch.testing.assert_close(out["grads"][name].double(), g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.dist
def test_tp2_grpo_step_equals_tp1(tmp_path, parallel_teardown):
    state = initial_state(1)
    batch = random_batch(seed=5, groups=2, group_size=GROUP)
    torch.save({"state": state, "batch": batch}, tmp_path / "in.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "step_worker.py"),
            str(tmp_path / "in.pt"),
            str(tmp_path / "tp2.pt"),
            "2",
        ],
        check=True,
        env=env,
        timeout=600,
    )
    tp2 = torch.load(tmp_path / "tp2.pt", weights_only=False)
    tp1 = grpo_step_outputs(state, batch, tp=1)
    for key in ("logp", "entropy", "adv"):
        torch.testing.assert_close(tp2[key], tp1[key], rtol=1e-5, atol=1e-6, msg=key)
    assert abs(tp2["loss"] - tp1["loss"]) <= 1e-5 * max(1.0, abs(tp1["loss"]))
    for name, g in tp1["grads"].items():
        torch.testing.assert_close(tp2["grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)
