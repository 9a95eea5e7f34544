"""GRPO with a learned reward (``reward.supervision``): a PRM gives the update per-token
``(B, T)`` process advantages, an ORM group-normalised scores at the last response token, and a
learned supervision without a checkpoint is a config error naming ``reward.model_path``;
``reward.ensemble`` scores with the mean of several reward models."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.config import ConfigError

GROUP = 4


def _rm_checkpoint(root, seed=5):
    """A randomly initialised reward model (large score-head weights: scores far apart)."""
    from dsm_engine.models import ParallelConfig, destroy_parallel, initialize_parallel
    from dsm_engine.models.checkpoint import save_checkpoint
    from dsm_engine.models.config import model_config
    from dsm_engine.reward_models.model import build_reward_model

    ctx = initialize_parallel(ParallelConfig(), seed=seed)
    cfg = model_config(
        "tiny",
        num_layers=1,
        hidden_size=32,
        num_attention_heads=4,
        ffn_hidden_size=64,
        vocab_size=384,
        seq_length=64,
        max_position_embeddings=128,
    )
    m = build_reward_model(cfg, ctx)
    with torch.no_grad():
        m.score_head.weight.normal_(0, 1.0)
    save_checkpoint(root, 0, m)
    destroy_parallel()
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.tasks import arithmetic as ar

    root = tmp_path_factory.mktemp("rk")
    paths = DemoPaths(root)
    ar.build_tokenizer(ar.pretraining_texts(500), paths.tokenizer)
    ar.write_jsonl(ar.make_problems("train", 20), paths.train)
    return paths, _rm_checkpoint(root / "rm")


@pytest.fixture(scope="module")
def second_rm(tmp_path_factory):
    return _rm_checkpoint(tmp_path_factory.mktemp("rk2") / "rm", seed=6)


def _config(paths, run_dir, reward):
    from dsm_engine.recipes.arithmetic import grpo_config

    return grpo_config(
        paths,
        paths.root / "none",
        run_dir=str(run_dir),
        model={"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64},
        checkpoint={"load": None, "every": 100},
        grpo={
            "steps": 1,
            "prompts_per_step": 2,
            "group_size": GROUP,
            "micro_batch_size": 8,
        },
        rollout={"max_new_tokens": 12},
        reward=reward,
        eval={"every": 0},
        logging={"progress": False, "tensorboard": False},
    )


def _one_step(monkeypatch, cfg):
    """Run one GRPO step; returns the batch and the advantages the update received."""
    import dsm_engine.grpo.trainer as trainer

    seen = {}
    original = trainer.grpo_updates

    def spy(model, opt, zero_grad, batch, old_logp, ref_logp, adv, *args, **kwargs):
        seen["batch"], seen["adv"] = batch, adv.detach().clone()
        return original(model, opt, zero_grad, batch, old_logp, ref_logp, adv, *args, **kwargs)

    monkeypatch.setattr(trainer, "grpo_updates", spy)
    history = trainer.run_grpo(cfg)
    return seen["batch"], seen["adv"], history[0]


def test_prm_supervision_feeds_per_token_process_advantages(setup, tmp_path, monkeypatch):
    from dsm_engine.models.parallel import current_context, destroy_parallel
    from dsm_engine.reward_models.grpo_rewards import compute_advantages
    from dsm_engine.reward_models.scorer import load_reward_fn
    from dsm_engine.text_codec import TextCodec

    paths, rm = setup
    reward = {"supervision": "prm", "model_path": str(rm), "delimiter": "\n"}
    try:
        batch, adv, metrics = _one_step(monkeypatch, _config(paths, tmp_path / "g", reward))
        prm = load_reward_fn(
            "prm", str(rm), str(paths.tokenizer), ctx=current_context(), delimiter="\n"
        )
        want, _ = compute_advantages(
            "prm", batch, GROUP, scorer=prm.scorer, decode=TextCodec(str(paths.tokenizer)).decode
        )
    finally:
        destroy_parallel()
    assert adv.shape == batch.tokens.shape  # (B, T): one advantage per token
    torch.testing.assert_close(adv, want.to(adv.dtype), rtol=0, atol=0)
    assert float(adv[batch.mask].abs().max()) > 0.1  # a real signal, not all zeros
    assert "rm_step_score" in metrics and "accuracy" in metrics  # verifier metrics kept


def test_orm_supervision_group_normalises_last_token_scores(setup, tmp_path, monkeypatch):
    from dsm_engine.models.parallel import current_context, destroy_parallel
    from dsm_engine.reward_models.grpo_rewards import split_rows
    from dsm_engine.reward_models.scorer import load_reward_fn

    paths, rm = setup
    reward = {"supervision": "orm", "model_path": str(rm)}
    try:
        batch, adv, metrics = _one_step(monkeypatch, _config(paths, tmp_path / "g", reward))
        orm = load_reward_fn("orm", str(rm), str(paths.tokenizer), ctx=current_context())
        prompts, responses, _ = split_rows(batch.tokens, batch.targets, batch.mask)
        scores = torch.tensor(orm.score_tokens(prompts, responses), dtype=torch.float64)
    finally:
        destroy_parallel()
    r = scores.view(-1, GROUP)
    mean = r.mean(dim=1, keepdim=True)
    std = ((r - mean) ** 2).mean(dim=1, keepdim=True).sqrt()
    want = ((r - mean) / (std + 1e-6)).view(-1)
    assert adv.shape == (len(batch),)
    torch.testing.assert_close(adv.double(), want, rtol=1e-4, atol=1e-4)
    assert metrics["rm_score"] == pytest.approx(float(scores.mean()), abs=1e-5)


def test_an_ensemble_scores_with_the_mean_of_its_members(setup, second_rm, tmp_path, monkeypatch):
    from dsm_engine.models.parallel import current_context, destroy_parallel
    from dsm_engine.reward_models.grpo_rewards import compute_advantages
    from dsm_engine.reward_models.scorer import MeanScorer, load_reward_fn
    from dsm_engine.text_codec import TextCodec

    paths, rm = setup
    reward = {"supervision": "prm", "model_path": str(rm), "ensemble": [str(second_rm)]}
    reward["delimiter"] = "\n"
    try:
        batch, adv, metrics = _one_step(monkeypatch, _config(paths, tmp_path / "g", reward))
        members = [
            load_reward_fn("prm", str(p), str(paths.tokenizer), ctx=current_context()).scorer
            for p in (rm, second_rm)
        ]
        decode = TextCodec(str(paths.tokenizer)).decode
        want, want_metrics = compute_advantages(
            "prm", batch, GROUP, scorer=MeanScorer(members), decode=decode, delimiter="\n"
        )
        alone, alone_metrics = compute_advantages(
            "prm", batch, GROUP, scorer=members[0], decode=decode, delimiter="\n"
        )
    finally:
        destroy_parallel()
    torch.testing.assert_close(adv, want.to(adv.dtype), rtol=0, atol=0)
    assert metrics["rm_step_score"] == pytest.approx(want_metrics["rm_step_score"], abs=1e-6)
    # The second member changes the scores: the ensemble is not the first model alone.
    assert metrics["rm_step_score"] != pytest.approx(alone_metrics["rm_step_score"], abs=1e-3)


def test_learned_supervision_without_checkpoint_names_model_path(setup, tmp_path):
    paths, _ = setup
    for kind in ("orm", "prm", "mixed"):
        with pytest.raises(ConfigError, match=r"reward\.model_path"):
            _config(paths, tmp_path / "g", {"supervision": kind})
    with pytest.raises(ConfigError, match=r"reward\.supervision"):
        _config(paths, tmp_path / "g", {"supervision": "value-model"})
    with pytest.raises(ConfigError, match=r"reward\.ensemble: .*verifier"):
        _config(paths, tmp_path / "g", {"ensemble": ["rm2"]})
    with pytest.raises(ConfigError, match=r"reward\.ensemble: empty"):
        _config(paths, tmp_path / "g", {"supervision": "orm", "model_path": "rm", "ensemble": [""]})
