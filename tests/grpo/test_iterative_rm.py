"""Iterative RL (paper §4.1.4): with ``grpo.iterations: 2`` and ``rm_update.steps > 0`` the reward
model is continued at the iteration boundary on the current policy's labelled samples, with
exactly ``rm_update.replay_ratio`` of every reward-model batch drawn from the replay buffer;
iteration 2 scores with the new reward model; a resumed run continues with the right one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from dsm_engine.config import ConfigError

GROUP = 4
HERE = Path(__file__).resolve().parent
RM_ARCH = {
    "preset": "tiny",
    "num_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "ffn_hidden_size": 64,
    "vocab_size": 384,
    "seq_length": 64,
    "max_position_embeddings": 128,
}


def _initial_rm(root, kind="orm"):
    """A ``dsm train rm`` model on synthetic rows: its checkpoint carries a replay buffer."""
    from dsm_engine.config import from_dict
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.trainers.reward_model import RewardModelConfig, run_reward_model

    rng = random.Random(0)
    labels = root / f"{kind}0.jsonl"
    with labels.open("w") as f:
        for _ in range(40):
            p = [rng.randrange(3, 384) for _ in range(rng.randint(2, 6))]
            r = [rng.randrange(3, 384) for _ in range(rng.randint(2, 8))]
            row = {"prompt_ids": p, "response_ids": r, "label": float(r[-1] % 2)}
            if kind == "prm":
                row.update(step_ends=[len(r) - 1], step_labels=[row["label"]])
            f.write(json.dumps(row) + "\n")
    cfg = from_dict(
        RewardModelConfig,
        {
            "run_dir": str(root / f"{kind}0"),
            "kind": kind,
            "model": dict(RM_ARCH),
            "train": {"steps": 2, "micro_batch_size": 10, "global_batch_size": 20},
            "schedule": {"lr": 1e-3},
            "data": {"train_path": str(labels)},
            "logging": {"progress": False, "tensorboard": False},
        },
    )
    try:
        run_reward_model(cfg)
    finally:
        destroy_parallel()
    return root / f"{kind}0" / "checkpoints"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    root = tmp_path_factory.mktemp("irm")
    paths = DemoPaths(root)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 40), paths.train)
    return paths, _initial_rm(root)


def _config(paths, rm, run_dir, *, reward=None, rm_update=None, grpo=None, **over):
    from dsm_engine.recipes.arithmetic import grpo_config

    return grpo_config(
        paths,
        paths.root / "none",
        run_dir=str(run_dir),
        model={"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64},
        checkpoint={"load": None, "every": 1},
        grpo={
            "steps": 4,
            "iterations": 2,
            "prompts_per_step": 2,
            "group_size": GROUP,
            "micro_batch_size": 8,
            **(grpo or {}),
        },
        rollout={"max_new_tokens": 8},
        schedule={"lr": 1e-2},
        reward={"supervision": "orm", "model_path": str(rm), **(reward or {})},
        rm_update={
            "steps": 3,
            "prompts": 4,
            "samples": 4,
            "global_batch_size": 20,
            "micro_batch_size": 10,
            "lr": 1e-2,
            "replay_ratio": 0.1,
            **(rm_update or {}),
        },
        eval={"every": 0},
        logging={"progress": False, "tensorboard": False},
        **over,
    )


class _Crash(Exception):
    pass


def _spied_run(cfg, on_step_end=None):
    """Run GRPO recording each step's batch, advantages and every scorer path it loaded."""
    import dsm_engine.grpo.trainer as trainer
    from dsm_engine.models.parallel import destroy_parallel

    seen = {"steps": [], "paths": []}
    advantages, load = trainer.compute_advantages, trainer.reward_model_scorer

    def spy_adv(kind, batch, group_size, **kw):
        adv, m = advantages(kind, batch, group_size, **kw)
        seen["steps"].append((batch, adv.detach().clone()))
        return adv, m

    def spy_load(cfg, path, ctx):
        seen["paths"].append(str(path))
        return load(cfg, path, ctx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "compute_advantages", spy_adv)
        mp.setattr(trainer, "reward_model_scorer", spy_load)
        try:
            seen["history"] = trainer.run_grpo(cfg, on_step_end=on_step_end)
        finally:
            destroy_parallel()
    return seen


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    paths, rm = setup
    run = tmp_path_factory.mktemp("straight") / "g"
    return run, _spied_run(_config(paths, rm, run))


def _orm_advantages(rm_path, tokenizer, batch):
    """Group-normalised ORM probabilities of ``rm_path`` on ``batch`` (what the update gets)."""
    from dsm_engine.models.parallel import parallel_session
    from dsm_engine.reward_models.grpo_rewards import compute_advantages
    from dsm_engine.reward_models.scorer import load_reward_fn

    with parallel_session() as ctx:
        scorer = load_reward_fn("orm", str(rm_path), str(tokenizer), ctx=ctx).scorer
        adv, _ = compute_advantages("orm", batch, GROUP, scorer=scorer)
    return adv


def _extra(step_dir):
    return torch.load(step_dir / "extra" / "rank_00000.pt", weights_only=False)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_boundary_retrains_rm_with_exact_replay_share_and_iteration_two_scores_with_it(
    setup, straight
):
    from dsm_engine.models.checkpoint import resolve_checkpoint

    paths, rm0 = setup
    run, seen = straight
    history = seen["history"]
    new_rm = run / "reward_model" / "iter_001" / "run" / "checkpoints" / "step_0000003"
    assert seen["paths"] == [str(rm0), str(new_rm)]  # loaded at start, switched at the boundary

    # Exactly 10% historical rows in every batch of the continued reward model: 2 of 20.
    rm_rows = _rows(run / "reward_model" / "iter_001" / "run" / "metrics.jsonl")
    assert [r["historical_frac"] for r in rm_rows] == [0.1, 0.1, 0.1]
    assert "rm_loss" not in history[1]
    assert history[2]["rm_historical_frac"] == pytest.approx(0.1)
    assert history[2]["rm_loss"] == rm_rows[-1]["loss"]
    assert 0 < history[2]["rm_rows"] <= 4 * 4  # prompts x samples (empty responses dropped)
    assert "rm_loss" not in history[3]

    # The buffer of the new checkpoint: all the history it replayed, plus the new training rows.
    old = _extra(resolve_checkpoint(rm0))["replay"]
    new = _extra(new_rm)["replay"]
    labels = _rows(run / "reward_model" / "iter_001" / "labels.jsonl")
    n_train = len(labels) - int(len(labels) * 0.1)
    assert new["seen"] == old["seen"] + n_train
    assert new["items"][: len(old["items"])] == old["items"]
    assert len(new["items"]) == len(old["items"]) + n_train

    # Iteration 1 scored with the initial reward model, iteration 2 with the new one, which differs.
    for i, (batch, adv) in enumerate(seen["steps"]):
        want = _orm_advantages(new_rm if i >= 2 else rm0, paths.tokenizer, batch)
        other = _orm_advantages(rm0 if i >= 2 else new_rm, paths.tokenizer, batch)
        torch.testing.assert_close(adv, want, rtol=0, atol=0)
        assert not torch.equal(want, other), i

    # The GRPO checkpoints record the reward model in use (relative to the run folder).
    assert _extra(run / "checkpoints" / "step_0000002")["reward_model"]["path"] == str(rm0)
    state = _extra(run / "checkpoints" / "step_0000003")["reward_model"]
    assert state == {"path": str(new_rm.relative_to(run)), "in_run_dir": True}


KEYS = ("loss", "reward_mean", "kl_mean", "grad_norm", "rm_score", "iteration")


def test_resume_mid_iteration_two_scores_with_the_new_rm(setup, straight, tmp_path):
    paths, rm = setup
    _, want = straight
    run = tmp_path / "g"

    def crash_after_three(step, _metrics):
        if step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        _spied_run(_config(paths, rm, run), on_step_end=crash_after_three)
    seen = _spied_run(_config(paths, rm, run, resume="auto"))
    new_rm = run / "reward_model" / "iter_001" / "run" / "checkpoints" / "step_0000003"
    assert seen["paths"] == [str(new_rm)]  # no retraining: the checkpoint named the new RM
    assert len(seen["history"]) == 1
    for k in KEYS:
        assert seen["history"][0][k] == want["history"][3][k], k


def test_crash_inside_the_rm_update_resumes_from_the_boundary_and_matches(
    setup, straight, tmp_path, monkeypatch
):
    """A crash while the reward model trains: resume=auto restarts from the boundary checkpoint,
    reuses the labels already written (from the same weights) and reaches the same results."""
    import dsm_engine.trainers.reward_model as rm_trainer

    paths, rm = setup
    _, want = straight
    run = tmp_path / "g"
    original = rm_trainer.run_reward_model

    def crash_in_rm(cfg, on_step_end=None):
        def hook(step, _metrics):
            if step == 2:
                raise _Crash

        return original(cfg, on_step_end=hook)

    monkeypatch.setattr(rm_trainer, "run_reward_model", crash_in_rm)
    with pytest.raises(_Crash):
        _spied_run(_config(paths, rm, run))
    monkeypatch.setattr(rm_trainer, "run_reward_model", original)
    labels = run / "reward_model" / "iter_001" / "labels.jsonl"
    written = labels.stat().st_mtime_ns

    seen = _spied_run(_config(paths, rm, run, resume="auto"))
    assert labels.stat().st_mtime_ns == written  # reused, not sampled again
    assert len(seen["history"]) == 2  # steps 3 and 4
    for got, ref in zip(seen["history"], want["history"][2:]):
        for k in (*KEYS, "rm_loss", "rm_historical_frac", "rm_rows", "rm_eval_loss"):
            assert got.get(k) == ref.get(k), k


def test_bad_rm_update_configs_name_the_field(setup, tmp_path):
    paths, rm = setup
    run = tmp_path / "g"
    with pytest.raises(ConfigError, match=r"rm_update\.steps.*reward\.supervision"):
        _config(paths, rm, run, reward={"supervision": "verifier"})
    with pytest.raises(ConfigError, match=r"grpo\.iterations=1"):
        _config(paths, rm, run, grpo={"iterations": 1})
    with pytest.raises(ConfigError, match=r"rm_update\.micro_batch_size"):
        _config(paths, rm, run, rm_update={"micro_batch_size": 3})
    with pytest.raises(ConfigError, match=r"rm_update\.replay_ratio"):
        _config(paths, rm, run, rm_update={"replay_ratio": 1.0})
    with pytest.raises(ConfigError, match=r"rm_update\.steps must be >= 0"):
        _config(paths, rm, run, rm_update={"steps": -1})
    # Off (steps 0) is fine with any supervision and one iteration.
    cfg = _config(
        paths,
        rm,
        run,
        reward={"supervision": "verifier"},
        grpo={"iterations": 1},
        rm_update={"steps": 0},
    )
    assert cfg.rm_update.steps == 0
    # The reward-model batch must split over the data-parallel ranks (checked before training).
    from dsm_engine.grpo.rm_refresh import RewardModelRefresher

    refresher = RewardModelRefresher(_config(paths, rm, run), run, None, None)
    refresher.check(2)  # 20 rows = 2 ranks x 10
    with pytest.raises(ConfigError, match=r"rm_update\.global_batch_size=20.*\(4\)"):
        refresher.check(4)
    # Process supervision cannot continue an outcome reward model (nor the reverse).
    mixed = _config(paths, rm, run, reward={"supervision": "mixed"})
    with pytest.raises(ConfigError, match=r"reward\.model_path: .* orm checkpoint.*prm"):
        RewardModelRefresher(mixed, run, None, None).check(1)
    # Iterative refresh continues one reward model, not an ensemble.
    with pytest.raises(ConfigError, match=r"reward\.ensemble: iterative refresh"):
        _config(paths, rm, run, reward={"ensemble": [str(rm)]})


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (HERE / "../../configs/grpo").glob("*.yaml"))
)
def test_shipped_grpo_configs_load(name):
    from dsm_engine.grpo.config import GRPOConfig
    from dsm_engine.trainers.config import load_run_config

    cfg, rest = load_run_config(GRPOConfig, ["--config", str(HERE / "../../configs/grpo" / name)])
    assert not rest
    if "iterative" in name:  # iterative RL: a learned reward retrained between iterations
        assert cfg.rm_update.steps > 0 and cfg.grpo.iterations >= 2
        assert cfg.rm_update.replay_ratio == 0.1
        assert (cfg.rm_update.global_batch_size * 0.1).is_integer()  # exactly 10%


def test_process_supervision_retrains_a_prm_on_monte_carlo_step_labels(setup, tmp_path):
    """supervision=mixed: the boundary labels steps by Monte-Carlo completions and continues
    a PRM (replaying exactly 10% of its earlier rows); iteration 2 switches to it."""
    paths, _ = setup
    prm0 = _initial_rm(tmp_path, "prm")
    run = tmp_path / "g"
    cfg = _config(
        paths,
        prm0,
        run,
        reward={"supervision": "mixed", "delimiter": " "},
        grpo={"steps": 2},
        rm_update={"steps": 2, "prompts": 2, "samples": 2, "completions": 2},
    )
    seen = _spied_run(cfg)
    out = run / "reward_model" / "iter_001"
    new_rm = out / "run" / "checkpoints" / "step_0000002"
    assert seen["paths"] == [str(prm0), str(new_rm)]
    labels = _rows(out / "labels.jsonl")
    assert labels and all(len(r["step_labels"]) == len(r["step_ends"]) >= 1 for r in labels)
    assert max(len(r["step_ends"]) for r in labels) > 1  # real multi-step Monte-Carlo labels
    assert [r["historical_frac"] for r in _rows(out / "run" / "metrics.jsonl")] == [0.1, 0.1]
    assert _extra(new_rm)["kind"] == "prm"
    assert seen["history"][1]["rm_rows"] == len(labels)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("tp", [1, 2])
def test_two_ranks_label_train_and_switch_identically(setup, tmp_path, tp, torchrun):
    """dp=2 (each sampler labels its share of the prompts) or tp=2 (one sampler): every rank
    trains the same reward model in the job's layout and switches to it at the boundary."""
    paths, rm = setup
    run, out = tmp_path / "g", tmp_path / "out.json"
    torchrun(HERE / "iterative_rm_worker.py", paths.root, rm, run, tp, out, timeout=600)
    got = json.loads(out.read_text())
    iteration = run / "reward_model" / "iter_001"
    new_rm = iteration / "run" / "checkpoints" / "step_0000003"
    assert got["paths"] == [str(rm), str(new_rm)]
    rows = _rows(iteration / "labels.jsonl")
    assert len({json.dumps(r["prompt_ids"]) for r in rows}) == 4  # every prompt, once
    assert [r["historical_frac"] for r in _rows(iteration / "run" / "metrics.jsonl")] == [0.1] * 3
    assert got["history"][2]["rm_rows"] == len(rows)
    replay = [_extra(new_rm)["replay"]] + [
        torch.load(new_rm / "extra" / "rank_00001.pt", weights_only=False)["replay"]
    ]
    assert replay[0]["items"] == replay[1]["items"]  # both ranks hold the same buffer
