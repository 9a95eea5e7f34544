"""The PPO-vs-GRPO step benchmark at a toy size (no timing is asserted): its memory breakdown
adds up — the critic is the policy's backbone with a scalar head, the optimizer holds Adam's
two moments of every trained parameter, each trained parameter has a gradient, and the static
parts fit under the measured peak."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rl" / "bench_ppo_vs_grpo.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_ppo_vs_grpo_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def bench():
    yield _load()
    from dsm_engine.models.parallel import destroy_parallel

    destroy_parallel()


def test_breakdown_adds_up_and_only_ppo_holds_a_critic(bench):
    spec = dataclasses.replace(bench.smoke_spec(), repeats=1)
    got = {v: bench.measure(spec, v) for v in ("grpo", "ppo")}
    h, vocab = spec.model["hidden_size"], spec.model["vocab_size"]
    policy = got["grpo"]["static"]["policy"]
    assert policy == 4 * got["grpo"]["policy_params"]  # fp32
    for variant, g in got.items():
        s = g["static"]
        assert len(g["steps"]) == 2 and all(t["total"] > 0 < t["wall"] for t in g["steps"])
        assert s["policy"] == s["reference"] == policy
        # the critic: no lm_head (V x H), a score head (H weights and a bias)
        critic = policy - 4 * vocab * h + 4 * (h + 1) if variant == "ppo" else 0
        assert s["critic"] == critic
        trained = policy + critic
        assert s["gradients"] == trained
        # Adam's exp_avg and exp_avg_sq, and a 0-d step count per parameter tensor
        assert 2 * trained <= s["optimizer_states"] <= 2 * trained + 1024
        assert sum(s.values()) <= g["peak"]
        assert g["peak"] > 0
    assert got["ppo"]["steps"][-1]["values"] > 0 and got["ppo"]["steps"][-1]["critic_update"] > 0
    assert got["grpo"]["steps"][-1]["values"] == 0 == got["grpo"]["steps"][-1]["critic_update"]


def test_summary_rest_is_peak_minus_the_static_parts(bench):
    static = {"policy": 4, "reference": 4, "critic": 3, "optimizer_states": 14, "gradients": 7}
    step = dict.fromkeys((*bench.PHASES, "total", "wall"), 1.0)
    got = {
        "steps": [step, step],
        "peak": 40 * 2**20,
        "static": {k: v * 2**20 for k, v in static.items()},
    }
    row = bench.summary("ppo", got)
    assert row["rest MiB"] == 40 - sum(static.values())
    assert row["critic MiB"] == 3 and row["peak MiB"] == 40
    line = bench.reading([row, row], {"grpo": got, "ppo": got})
    assert line.startswith("PPO's step needs 1.00x the peak memory of GRPO's")


@pytest.mark.slow
def test_script_writes_both_variants_each_in_its_process(tmp_path):
    assert _load().main(["--smoke", "--repeats", "1", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "ppo_vs_grpo.json").read_text())
    rows = payload["rows"]
    assert [r["variant"] for r in rows] == ["grpo", "ppo"]
    assert all("error" not in r for r in rows), rows
    assert rows[0]["critic MiB"] == 0 < rows[1]["critic MiB"]
    assert payload["notes"][0].startswith("PPO's step needs")
    assert (tmp_path / "ppo_vs_grpo.md").read_text().startswith("# ppo_vs_grpo")


def test_cuda_run_without_a_gpu_says_so_and_writes_nothing(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA run would measure")
    assert _load().main(["--device", "cuda", "--out", str(tmp_path)]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
