"""Checkpoint/resume of a GRPO run restores policy, reference, optimizer and data position:
3 straight steps equal 2 steps, a crash, and ``resume=auto`` for the third (bit for bit on CPU).
The run spans two iterations, so the reference changes mid-run and must come back from disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dsm_engine.rewards import register_reward_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers import ParityReward  # noqa: E402


class _Crash(Exception):
    pass


def _config(paths, run_dir, **over):
    from dsm_engine.recipes.arithmetic import grpo_config

    return grpo_config(
        paths,
        paths.root / "none",
        run_dir=str(run_dir),
        model={"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64},
        checkpoint={"load": None, "every": 1},
        grpo={
            "steps": 3,
            "iterations": 2,
            "prompts_per_step": 2,
            "group_size": 4,
            "micro_batch_size": 4,
        },
        rollout={"max_new_tokens": 6},
        schedule={"lr": 1e-2},
        reward={"name": "parity"},
        eval={"every": 0},
        logging={"progress": False, "tensorboard": False},
        **over,
    )


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_restores_policy_reference_optimizer_and_data_position(tmp_path):
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    paths = DemoPaths(tmp_path)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 50), paths.train)
    register_reward_fn("parity", lambda **kw: ParityReward(str(paths.tokenizer), **kw))

    straight = run_grpo(_config(paths, tmp_path / "a"))
    destroy_parallel()

    def crash_after_two(step, _metrics):
        if step == 2:
            raise _Crash

    with pytest.raises(_Crash):
        run_grpo(_config(paths, tmp_path / "b"), on_step_end=crash_after_two)
    destroy_parallel()
    resumed = run_grpo(_config(paths, tmp_path / "b", resume="auto"))
    destroy_parallel()

    assert len(resumed) == 1  # only the third step ran again
    keys = ("loss", "reward_mean", "kl_mean", "grad_norm", "entropy", "ratio_max", "iteration")
    assert straight[0]["reward_mean"] != straight[1]["reward_mean"] or straight[0]["loss"] != 0
    assert straight[2]["kl_mean"] > 0  # the reference changed at iteration 2 and is in use
    for k in keys:
        assert resumed[0][k] == straight[2][k], k
    assert [r["step"] for r in _rows(tmp_path / "b")] == [1, 2, 3]
