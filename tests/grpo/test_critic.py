"""PPO's critic: the clipped value loss against values worked out by hand in float64, and on
a tiny critic (CPU, the policy's architecture with a scalar head) per-token values of the
right shape that equal the model's own scores, a backbone copied from the policy, and a
value-loss gradient that lowers the loss over a few SGD steps on a fixed batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import TINY, random_batch  # noqa: E402

from dsm_engine.grpo.critic import clipped_value_loss  # noqa: E402


def test_clipped_value_loss_by_hand():
    # token 0: V moved 0.3 above V_old, clipped to 0.9: max(1.0², 0.9²) -> 0.5
    # token 1: inside the clip range: both terms 0.5² -> 0.125
    # token 2: masked out
    # token 3: V moved 0.5 below V_old, clipped to 0.4: max(0.1², 0.4²) -> 0.08, no gradient
    values = torch.tensor([[1.0, 0.5, 5.0, 0.1]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.7, 0.45, 0.0, 0.6]], dtype=torch.float64)
    returns = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True]])
    loss, metrics = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert abs(float(loss.detach()) - (0.5 + 0.125 + 0.08) / 3) < 1e-6
    assert metrics["value_clip_frac"] == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(
        values.grad, torch.tensor([[1.0 / 3, -0.5 / 3, 0.0, 0.0]], dtype=torch.float64)
    )


@pytest.fixture()
def tiny_critic():
    from dsm_engine.grpo.critic import build_critic
    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import destroy_parallel

    cfg = model_config(TINY)
    ctx = initialize_parallel(ParallelConfig(), seed=4)
    yield build_critic(cfg, ctx), build_model(cfg, ctx)
    destroy_parallel()


def test_values_are_the_critics_scores_and_start_from_the_policy(tiny_critic):
    from dsm_engine.grpo.critic import init_critic_from_policy, token_values
    from dsm_engine.reward_models.model import reward_scores

    critic, policy = tiny_critic
    init_critic_from_policy(critic, policy)
    params = dict(policy.named_parameters())
    copied = [n for n, p in critic.named_parameters() if not n.startswith("score_head")]
    assert copied and all(
        torch.equal(p, params[n]) for n, p in critic.named_parameters() if n in copied
    )
    batch = random_batch(seed=0, groups=2, group_size=3)
    values = token_values(critic, batch.tokens, micro_batch_size=4)  # microbatches of 4 + 2
    assert values.shape == batch.tokens.shape and values.dtype == torch.float32
    with torch.no_grad():
        critic.eval()
        torch.testing.assert_close(values, reward_scores(critic, batch.tokens))


def test_value_loss_gradient_equals_autograd_and_descends(tiny_critic):
    from dsm_engine.grpo.critic import accumulate_value_grads, token_values
    from dsm_engine.reward_models.model import reward_scores

    critic, _ = tiny_critic
    batch = random_batch(seed=1, groups=2, group_size=3)
    old = token_values(critic, batch.tokens, micro_batch_size=4)
    returns = old + torch.randn(old.shape, generator=torch.Generator().manual_seed(0))

    # microbatches of 4 + 2 rows sum to the whole batch's masked mean, clipping included
    # (V_old far from V on many tokens)
    far = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))
    critic.zero_grad()
    loss, metrics = accumulate_value_grads(
        critic, batch, far, returns, clip=0.2, micro_batch_size=4
    )
    got = {n: p.grad.clone() for n, p in critic.named_parameters()}
    critic.zero_grad()
    critic.train()
    values = reward_scores(critic, batch.tokens)
    want_loss, want_metrics = clipped_value_loss(values, far, returns, batch.mask, clip=0.2)
    want_loss.backward()
    assert loss == pytest.approx(float(want_loss), rel=1e-5)
    assert metrics["value_clip_frac"] == pytest.approx(want_metrics["value_clip_frac"])
    assert metrics["value_clip_frac"] > 0.1
    for n, p in critic.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)

    opt = torch.optim.SGD(critic.parameters(), lr=0.005)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss, _ = accumulate_value_grads(critic, batch, old, returns, clip=10.0, micro_batch_size=4)
        losses.append(loss)
        opt.step()
    assert losses[0] == pytest.approx(
        float(0.5 * (old - returns)[batch.mask].square().mean()), rel=1e-5
    )
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_values_and_value_gradients_equal_pp1(tmp_path, torchrun):
    """One layer per stage, 6 rows in microbatches of 5 + 1 through the 1F1B schedule: the
    values, the value loss, its clipped fraction and every gradient match PP=1."""
    from critic_worker import critic_outputs
    from step_worker import initial_state

    from dsm_engine.models.parallel import destroy_parallel

    state = initial_state(3)
    g = torch.Generator().manual_seed(5)
    head = {"weight": 0.2 * torch.randn(1, TINY["hidden_size"], generator=g), "bias": torch.ones(1)}
    batch = random_batch(seed=4, groups=2, group_size=3)
    torch.save({"state": state, "head": head, "batch": batch}, tmp_path / "in.pt")
    torchrun(Path(__file__).parent / "critic_worker.py", tmp_path / "in.pt", tmp_path / "out.pt", 2)
    ranks = [torch.load(tmp_path / f"out.pt.rank{r}", weights_only=False) for r in range(2)]
    try:
        want = critic_outputs(state, head, batch, pp=1)
    finally:
        destroy_parallel()
    assert want["metrics"]["value_clip_frac"] > 0.1
    for got in ranks:  # every stage returns the same values and loss
        torch.testing.assert_close(got["values"], want["values"], rtol=1e-5, atol=1e-6)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-5)
    grads = {**ranks[0]["grads"], **ranks[1]["grads"]}
    assert set(grads) == set(want["grads"])
    for name, w in want["grads"].items():
        torch.testing.assert_close(grads[name], w, rtol=1e-5, atol=1e-6, msg=name)
