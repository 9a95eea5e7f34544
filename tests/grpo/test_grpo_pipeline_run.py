"""``run_grpo`` at pp=2 end to end (torchrun, 2 processes, gloo): rollouts on the first
stage, log-probs and updates through the pipeline schedule, weight sync of both stages into the
sampler, checkpoints of both stages; a run stopped after two steps resumes into the same third
step as a straight run (bit for bit on CPU), the reference reloaded across an iteration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run_worker(torchrun, root: Path, algorithm: str = "grpo") -> dict:
    out = root / "histories.json"
    torchrun(HERE / "pp_run_worker.py", root, out, algorithm)
    return json.loads(out.read_text())


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_grpo_run_trains_checkpoints_and_resumes(tmp_path, torchrun):
    from dsm_engine.models.checkpoint import latest_checkpoint
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    paths = DemoPaths(tmp_path)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 50), paths.train)
    hist = _run_worker(torchrun, tmp_path)
    straight, resumed = hist["straight"], hist["resumed"]

    assert len(straight) == 3 and len(resumed) == 1
    for row in straight:
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, bad
        assert row["response_len_mean"] > 0 and row["time_sync_s"] > 0
    assert any(row["grad_norm"] > 0 for row in straight)
    assert straight[2]["kl_mean"] > 0  # iteration 2's reference is the updated policy
    for run in ("a", "b"):
        for folder in ("checkpoints", "reference"):
            last = latest_checkpoint(tmp_path / run / folder)
            assert last is not None and last.name == "step_0000003", (run, folder)
    keys = ("loss", "reward_mean", "kl_mean", "grad_norm", "entropy", "ratio_max", "iteration")
    for k in keys:
        assert resumed[0][k] == straight[2][k], k
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_ppo_run_trains_its_critic_checkpoints_and_resumes(tmp_path, torchrun):
    """ppo at pp=2: the critic's values and value-loss updates run through the pipeline (both
    stages checkpoint it), and a stopped run resumes into the same third step (policy and
    value losses bit for bit on CPU)."""
    from dsm_engine.models.checkpoint import latest_checkpoint
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    paths = DemoPaths(tmp_path)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 50), paths.train)
    hist = _run_worker(torchrun, tmp_path, "ppo")
    straight, resumed = hist["straight"], hist["resumed"]
    assert len(straight) == 3 and len(resumed) == 1
    for row in straight:
        for k in ("loss", "grad_norm", "value_loss", "critic_grad_norm", "value_mean"):
            assert math.isfinite(row[k]), k
        assert row["value_loss"] > 0 and row["critic_grad_norm"] > 0
    last = latest_checkpoint(tmp_path / "b" / "critic")
    assert last is not None and last.name == "step_0000003"
    for k in ("loss", "grad_norm", "reward_mean", "value_loss", "value_mean", "critic_grad_norm"):
        assert resumed[0][k] == straight[2][k], k


def test_virtual_pipeline_layout_is_refused_by_name(tmp_path):
    # (tied embeddings at pp > 1 are no longer refused: both optimizer backends sum the two
    # stages' copies, tests/trainers/test_tied_embedding_pp.py)
    from dsm_engine.config import ConfigError
    from dsm_engine.recipes.arithmetic import DemoPaths, grpo_config

    with pytest.raises(ConfigError, match=r"parallel\.virtual_pp"):
        grpo_config(DemoPaths(tmp_path), tmp_path / "none", parallel={"pp": 2, "virtual_pp": 2})
