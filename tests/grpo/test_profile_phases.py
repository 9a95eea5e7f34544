"""A profiled GRPO run (``profile.enabled``) times every phase of its steps, in order."""

from __future__ import annotations

import json

import pytest

from dsm_engine.rewards import register_reward_fn

PHASES = [
    "generation",
    "verifier",
    "rollout_batch",
    "reference_logprobs",
    "old_logprobs",
    "advantages",
    "forward_backward",
    "optimizer",
    "weight_sync",
    "checkpoint",
]


class _FirstTokenEven:
    """A reward a random policy earns about half the time."""

    def __init__(self, codec_path: str, **_: object) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(codec_path)

    def score(self, prompts, outputs, golds):
        ids = [self.tok.encode(t, add_special_tokens=False).ids for t in outputs]
        return [float(bool(x) and x[0] % 2 == 0) for x in ids]


def test_grpo_steps_record_every_phase_in_order(tmp_path):
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import DemoPaths, grpo_config
    from dsm_engine.tasks import arithmetic as ar

    paths = DemoPaths(tmp_path)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 50), paths.train)
    register_reward_fn("first_even", lambda **kw: _FirstTokenEven(str(paths.tokenizer), **kw))
    cfg = grpo_config(
        paths,
        paths.root / "none",
        run_dir=str(tmp_path / "run"),
        model={"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64},
        checkpoint={"load": None, "every": 2},
        grpo={"steps": 2, "prompts_per_step": 2, "group_size": 4, "micro_batch_size": 4, "mu": 2},
        rollout={"max_new_tokens": 6},
        reward={"name": "first_even"},
        eval={"every": 0},
        logging={"progress": False, "tensorboard": False},
        profile={"enabled": True, "peak_tflops": 0.001},
    )
    try:
        history = run_grpo(cfg)
    finally:
        destroy_parallel()

    rows = [json.loads(x) for x in (tmp_path / "run" / "profile" / "phases.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2]
    names = [p["name"] for p in rows[1]["phases"]]
    # μ = 2 updates: forward_backward and optimizer twice, in turn
    expected = PHASES[:6] + ["forward_backward", "optimizer"] * 2 + PHASES[8:]
    assert names == expected
    assert "checkpoint" not in [p["name"] for p in rows[0]["phases"]]  # checkpoint.every=2
    for m in history:
        timed = sum(v for k, v in m.items() if k.startswith("time/") and k != "time/step_s")
        assert timed == pytest.approx(m["time/step_s"], rel=1e-9)
        assert m["time/generation_s"] > 0 and m["time/verifier_s"] > 0
        assert m["throughput/gen_tokens_per_s"] > 0 and m["throughput/train_tokens_per_s"] > 0
        assert m["mfu/train"] > 0 and m["mfu/step"] > 0
        assert m["time/step_s"] >= m["step_time_s"]
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert logged[-1]["time/checkpoint_s"] == history[-1]["time/checkpoint_s"]
