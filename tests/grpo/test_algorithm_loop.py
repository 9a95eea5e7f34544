"""The ``algorithm:`` switch of the GRPO loop: each wired method runs a few steps on a tiny
policy with finite losses and its own metrics; online methods (rloo, dr_grpo, online_rft) load
the updated policy into the sampler after every step, offline ones (rft, dpo) leave the
sampler at π_sft (the initial weights) for the whole run, evaluation aside; sft samples nothing
and lowers the NLL of the gold solutions; a step whose coefficient keeps no row is skipped and
logged; invalid combinations are ConfigErrors naming their fields."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from dsm_engine.config import ConfigError
from dsm_engine.rewards import register_reward_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers import ParityReward  # noqa: E402

GROUP = 4
STEPS = 2


class _NeverReward:
    """No sample is ever correct."""

    def __init__(self, **_: object) -> None:
        pass

    def score(self, prompts, outputs, golds):
        return [0.0] * len(outputs)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    paths = DemoPaths(tmp_path_factory.mktemp("algo"))
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 20), paths.train)
    ar.write_jsonl(ar.make_problems("heldout", 4), paths.heldout)
    register_reward_fn("parity_algo", lambda **kw: ParityReward(str(paths.tokenizer), **kw))
    register_reward_fn("never_algo", lambda **kw: _NeverReward(**kw))
    return paths


def _config(paths, run_dir, algorithm, *, grpo=None, reward="parity_algo", **over):
    from dsm_engine.recipes.arithmetic import grpo_config

    sections = {
        "run_dir": str(run_dir),
        "model": {"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64},
        "checkpoint": {"load": None, "every": 100},
        "grpo": {
            "steps": STEPS,
            "prompts_per_step": 2,
            "group_size": GROUP,
            "micro_batch_size": 8,
            **(grpo or {}),
        },
        "rollout": {"max_new_tokens": 6},
        "schedule": {"lr": 1e-2},
        "reward": {"name": reward} if isinstance(reward, str) else reward,
        "eval": {"every": 0},
        "logging": {"progress": False, "tensorboard": False},
        "algorithm": algorithm,
    }
    sections.update(over)
    return grpo_config(paths, paths.root / "none", **sections)


def _run(monkeypatch, cfg):
    """Run ``cfg``; returns the history, the final weights (Hugging Face names) of the
    sampler, the policy and the reference, and what each sampler sync received: ``policy`` or
    ``reference`` with a copy of its weights at the time."""
    import dsm_engine.grpo.trainer as trainer
    from dsm_engine.models.parallel import destroy_parallel

    seen: dict = {"syncs": []}
    sync, start = trainer.sync_weights, trainer.GRPORun.start_sampler

    def spy_sync(model, engine, model_cfg):
        weights = {k: v.detach().clone() for k, v in model.state_dict().items() if v is not None}
        seen["syncs"].append((model, weights))
        return sync(model, engine, model_cfg)

    def spy_start(self):
        seen["run"] = self
        return start(self)

    monkeypatch.setattr(trainer, "sync_weights", spy_sync)
    monkeypatch.setattr(trainer.GRPORun, "start_sampler", spy_start)
    try:
        history = trainer.run_grpo(cfg)
        run = seen["run"]
        states = {
            "sampler": {k: v.detach().float() for k, v in run.engine.model.state_dict().items()},
            "policy": _hf_state(run, run.policy),
            "reference": _hf_state(run, run.reference),
        }
    finally:
        destroy_parallel()
    kinds = {id(run.policy): "policy", id(run.reference): "reference"}
    return history, states, [(kinds[id(m)], w) for m, w in seen["syncs"]]


def _hf_state(run, model) -> dict[str, torch.Tensor]:
    from dsm_engine.models.convert import export_hf_state_dict

    return {k: v.detach().float() for k, v in export_hf_state_dict(model, run.model_cfg).items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b if k in a)


def _assert_finite_steps(history):
    assert len(history) == STEPS
    for row in history:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        assert row["update_skipped"] == 0.0


@pytest.mark.parametrize("name", ["online_rft", "rloo", "dr_grpo"])
def test_online_methods_train_and_sync_the_sampler_after_every_update(
    name, paths, tmp_path, monkeypatch
):
    history, states, syncs = _run(monkeypatch, _config(paths, tmp_path / "r", {"name": name}))
    _assert_finite_steps(history)
    assert [kind for kind, _ in syncs] == ["policy"] * (1 + STEPS)  # start, every update
    assert _same(states["sampler"], states["policy"])
    assert not _same(states["policy"], states["reference"])  # it learned
    if name == "online_rft":
        assert all(0 < row["kept"] < 1 for row in history)  # SFT on the correct samples only


@pytest.mark.parametrize("name", ["rft", "dpo"])
def test_offline_methods_sample_from_the_initial_policy_throughout(
    name, paths, tmp_path, monkeypatch
):
    cfg = _config(
        paths,
        tmp_path / "r",
        {"name": name, "pairs_per_prompt": 2, "dpo_beta": 0.5},
        eval={
            "path": str(paths.heldout),
            "every": 1,
            "num_prompts": 2,
            "max_new_tokens": 4,
            "samples": 3,
        },
    )
    history, states, syncs = _run(monkeypatch, cfg)
    _assert_finite_steps(history)
    assert not _same(states["policy"], states["reference"])  # the policy was updated ...
    assert _same(states["sampler"], states["reference"])  # ... the sampler holds π_sft
    # The sampler got π_sft at the start; the policy only for each evaluation (start and every
    # step), π_sft again right after, and π_sft never changed.
    kinds = [kind for kind, _ in syncs]
    assert kinds == ["reference"] + ["policy", "reference"] * (1 + STEPS)
    first = syncs[0][1]
    assert all(_same(w, first) for kind, w in syncs if kind == "reference")
    # Greedy and sampled accuracy both come from the policy's weights in the sampler.
    assert all(0 <= row["eval_accuracy"] <= 1 for row in history)
    assert all(0 <= row["eval_sampled_accuracy"] <= 1 for row in history)
    if name == "dpo":
        assert all(row["dpo_pairs"] >= 1 for row in history)
        assert all(0 <= row["dpo_accuracy"] <= 1 and "dpo_margin" in row for row in history)
    else:
        assert all(0 < row["kept"] < 1 for row in history)


def test_a_step_without_a_kept_sample_skips_the_update(paths, tmp_path, monkeypatch):
    cfg = _config(paths, tmp_path / "r", {"name": "rft"}, reward="never_algo")
    history, states, _ = _run(monkeypatch, cfg)
    assert [row["update_skipped"] for row in history] == [1.0] * STEPS
    assert all(row["loss"] == 0.0 and row["kept"] == 0.0 for row in history)
    assert _same(states["policy"], states["reference"])  # untouched


def test_the_default_algorithm_is_grpo(paths, tmp_path):
    from dsm_engine.recipes.arithmetic import grpo_config

    cfg = grpo_config(paths, paths.root / "none", run_dir=str(tmp_path / "r"))
    assert cfg.algorithm.name == "grpo"


@pytest.mark.parametrize(
    ("algorithm", "over", "match"),
    [
        ({"name": "grpo"}, {"critic": {"lr": 1e-3}}, r"critic: .*algorithm\.name=ppo only"),
        ({"name": "ppo"}, {"critic": {"lr": -1.0}}, r"critic\.lr must be"),
        ({"name": "ppo", "gamma": 2.0}, {}, r"algorithm\.gamma must be in"),
        (
            {"name": "ppo"},
            {"reward": {"supervision": "orm", "model_path": "rm"}},
            r"reward\.supervision=orm: .*algorithm\.name=grpo only",
        ),
        ({"name": "sft"}, {}, r"grpo\.group_size=4: algorithm\.name=sft .*group_size=1"),
        (
            {"name": "sft"},
            {"grpo": {"group_size": 1, "tis_cap": 2.0}},
            r"grpo\.tis_cap=2\.0: algorithm\.name=sft samples nothing",
        ),
        ({"name": "sft"}, {"grpo": {"group_size": 1, "mu": 2}}, r"grpo\.mu=2: algorithm\.name=sft"),
        ({"name": "rft"}, {"grpo": {"mu": 2}}, r"grpo\.mu=2: algorithm\.name=rft"),
        ({"name": "dpo"}, {"grpo": {"mu": 2}}, r"grpo\.mu=2: algorithm\.name=dpo"),
        ({"name": "online_rft"}, {"grpo": {"mu": 2}}, r"grpo\.mu=2: algorithm\.name=online_rft"),
        (
            {"name": "online_rft"},
            {"grpo": {"old_logp": "rollout"}},
            r"grpo\.old_logp=rollout: algorithm\.name=online_rft",
        ),
        ({"name": "rft"}, {"grpo": {"iterations": 2}}, r"grpo\.iterations=2: .*rft is offline"),
        ({"name": "dpo"}, {"grpo": {"tis_cap": 2.0}}, r"grpo\.tis_cap=2\.0: .*dpo is offline"),
        ({"name": "rloo"}, {"grpo": {"group_size": 1}}, r"grpo\.group_size=1: .*rloo"),
        (
            {"name": "rloo"},
            {"reward": {"supervision": "prm", "model_path": "rm"}},
            r"reward\.supervision=prm: .*algorithm\.name=grpo only",
        ),
        ({"name": "a2c"}, {}, r"algorithm\.name: 'a2c' is not one of"),
        ({"name": "grpo"}, {"eval": {"samples": -1}}, r"eval\.samples=-1: must be >= 0"),
    ],
)
def test_invalid_combinations_name_their_fields(paths, tmp_path, algorithm, over, match):
    grpo = over.pop("grpo", None)
    with pytest.raises(ConfigError, match=match):
        _config(paths, tmp_path / "r", algorithm, grpo=grpo, **over)


def test_sft_trains_on_the_gold_solutions_without_sampling(paths, tmp_path, monkeypatch):
    """sft: no rollout (the sampler gets the policy for held-out evaluation only) and the
    policy's NLL of the step's gold solutions falls over 5 steps of 4 prompts."""
    import dsm_engine.grpo.trainer as trainer

    def no_sampling(*args, **kwargs):
        raise AssertionError("sft sampled")

    monkeypatch.setattr(trainer, "rollout_and_score", no_sampling)
    cfg = _config(
        paths,
        tmp_path / "r",
        {"name": "sft"},
        grpo={"group_size": 1, "prompts_per_step": 4, "steps": 5},
        rollout={"max_new_tokens": 24},  # the solutions are 18-20 tokens with the end token
        eval={"path": str(paths.heldout), "every": 5, "num_prompts": 2, "max_new_tokens": 4},
    )
    history, states, syncs = _run(monkeypatch, cfg)
    assert len(history) == 5
    assert [kind for kind, _ in syncs] == ["policy", "policy"]  # the two evaluations
    assert _same(states["sampler"], states["policy"])
    for row in history:
        assert row["update_skipped"] == 0.0 and row["truncated_frac"] == 0.0
        assert math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
        assert "reward_mean" not in row and "mismatch_abs" not in row  # nothing was sampled
    nll = [row["nll"] for row in history]
    assert nll[0] > 5.0 and nll[-1] < nll[0] - 0.5, nll


def test_sft_names_the_missing_solution_field_and_file(paths, tmp_path):
    from dsm_engine.grpo.trainer import run_grpo

    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"question": "1 + 1?", "answer": "2"}\n')
    cfg = _config(
        paths,
        tmp_path / "r",
        {"name": "sft"},
        grpo={"group_size": 1},
        data={"path": str(bare), "tokenizer": str(paths.tokenizer)},
    )
    with pytest.raises(ValueError, match=rf"algorithm\.name=sft.*{bare}:1 has no field 'solution'"):
        run_grpo(cfg)


class _Crash(Exception):
    pass


def test_an_offline_run_resumes_sampling_from_the_initial_policy(paths, tmp_path):
    """3 straight rft steps equal 2 steps, a crash and ``resume=auto`` for the third: the
    resumed sampler is loaded with π_sft (the reference on disk), not the trained policy."""
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel

    def config(run_dir, **over):
        return _config(
            paths,
            run_dir,
            {"name": "rft"},
            grpo={"steps": 3},
            checkpoint={"load": None, "every": 1},
            **over,
        )

    def crash_after_two(step, _metrics):
        if step == 2:
            raise _Crash

    try:
        straight = run_grpo(config(tmp_path / "a"))
        destroy_parallel()
        with pytest.raises(_Crash):
            run_grpo(config(tmp_path / "b"), on_step_end=crash_after_two)
        destroy_parallel()
        resumed = run_grpo(config(tmp_path / "b", resume="auto"))
    finally:
        destroy_parallel()
    assert len(resumed) == 1
    assert straight[2]["update_skipped"] == 0.0
    for k in ("loss", "reward_mean", "kept", "grad_norm", "entropy", "kl_mean"):
        assert resumed[0][k] == straight[2][k], k


def test_ppo_trains_the_policy_and_its_critic(paths, tmp_path, monkeypatch):
    """ppo: the policy changes, the sampler follows
    the policy, and each step logs a finite value loss, the critic's lr and its fit."""
    cfg = _config(
        paths, tmp_path / "r", {"name": "ppo", "gamma": 1.0, "lam": 0.9}, critic={"lr": 5e-3}
    )
    history, states, syncs = _run(monkeypatch, cfg)
    _assert_finite_steps(history)
    assert [kind for kind, _ in syncs] == ["policy"] * (1 + STEPS)
    assert _same(states["sampler"], states["policy"])
    assert not _same(states["policy"], states["reference"])  # the policy learned
    for row in history:
        assert math.isfinite(row["value_loss"]) and row["value_loss"] > 0
        # its own peak learning rate under the run's schedule (the policy's peak is 1e-2)
        assert row["critic_lr"] == pytest.approx(row["lr"] / 2)
        assert math.isfinite(row["critic_grad_norm"]) and row["critic_grad_norm"] > 0
        assert math.isfinite(row["value_mean"]) and "explained_variance" in row
        assert "kl_reward" in row


def test_ppo_critic_weights_change_and_start_from_the_policy(paths, tmp_path):
    """The critic's backbone starts equal to the policy's initial weights (the reference) and
    the value-loss updates change it."""
    import dsm_engine.grpo.ppo as ppo
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel

    seen = {}
    start = ppo.Critic.start

    def spy_start(self, policy):
        start(self, policy)
        seen["initial"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        seen["policy"] = {n: p.detach().clone() for n, p in policy.named_parameters()}
        seen["critic"] = self

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ppo.Critic, "start", spy_start)
            run_grpo(_config(paths, tmp_path / "r", {"name": "ppo"}))
    finally:
        destroy_parallel()
    initial, policy = seen["initial"], seen["policy"]
    backbone = [n for n in initial if not n.startswith("score_head")]
    assert backbone and all(torch.equal(initial[n], policy[n]) for n in backbone)
    final = dict(seen["critic"].model.named_parameters())
    assert any(not torch.equal(final[n].detach(), initial[n]) for n in backbone)
    assert not torch.equal(final["score_head.weight"].detach(), initial["score_head.weight"])


def test_a_ppo_run_resumes_exactly_with_its_critic(paths, tmp_path):
    """3 straight ppo steps equal 2 steps, a crash and ``resume=auto`` for the third: the
    critic and its optimizer come back from the checkpoint, so the policy's and the value
    losses are the same (they differ if the critic restarts from the policy or its Adam
    state is lost)."""
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel

    def config(run_dir, **over):
        return _config(
            paths,
            run_dir,
            {"name": "ppo"},
            grpo={"steps": 3},
            checkpoint={"load": None, "every": 1},
            critic={"lr": 5e-3},
            **over,
        )

    def crash_after_two(step, _metrics):
        if step == 2:
            raise _Crash

    try:
        straight = run_grpo(config(tmp_path / "a"))
        destroy_parallel()
        with pytest.raises(_Crash):
            run_grpo(config(tmp_path / "b"), on_step_end=crash_after_two)
        destroy_parallel()
        resumed = run_grpo(config(tmp_path / "b", resume="auto"))
    finally:
        destroy_parallel()
    assert len(resumed) == 1
    assert (tmp_path / "b" / "critic").is_dir()
    keys = ("loss", "grad_norm", "reward_mean", "value_loss", "value_mean", "critic_grad_norm",
            "explained_variance", "kl_reward")  # fmt: skip
    for k in keys:
        assert resumed[0][k] == straight[2][k], k


def test_ppo_critic_starts_from_a_reward_model_checkpoint(paths, tmp_path):
    """critic.load: the critic starts with that checkpoint's weights, score head included (here
    the critic a first ppo run saved: a reward model of the policy's architecture)."""
    import dsm_engine.grpo.ppo as ppo
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel

    seen: dict = {}
    start = ppo.Critic.start

    def spy_start(self, policy):
        start(self, policy)
        seen.setdefault("critics", []).append(self)
        seen.setdefault("initial", []).append(
            {n: p.detach().clone() for n, p in self.model.named_parameters()}
        )

    one_step = {"steps": 1}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ppo.Critic, "start", spy_start)
            run_grpo(_config(paths, tmp_path / "a", {"name": "ppo"}, grpo=one_step))
            destroy_parallel()
            trained = {
                n: p.detach().clone() for n, p in seen["critics"][0].model.named_parameters()
            }
            cfg = _config(
                paths,
                tmp_path / "b",
                {"name": "ppo"},
                grpo=one_step,
                critic={"load": str(tmp_path / "a" / "critic")},
            )
            run_grpo(cfg)
    finally:
        destroy_parallel()
    first, loaded = seen["initial"]
    assert not torch.equal(first["score_head.weight"], trained["score_head.weight"])
    assert all(torch.equal(loaded[n], trained[n]) for n in trained)
