"""One GRPO step on a tiny megatron-core policy equals the paper's formula written out in
float64, and TP=2 and PP=2 equal TP=1, PP=1; so do the loop's RFT and DPO steps (their
coefficient, kept rows and update: ``planned_update``), and with sequence parallelism at TP=2
the RFT step and PPO's (policy and critic) equal TP=1's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _helpers import (  # noqa: E402
    TINY,
    assert_same_adam_step,
    paper_objective_fp64,
    planned_scenario,
    random_batch,
)
from step_worker import (  # noqa: E402
    BETA,
    EPS,
    GROUP,
    TEMP,
    grpo_step_outputs,
    initial_state,
    planned_step_outputs,
    ppo_step_outputs,
)

# one rank's rows: two groups of 4, 4 correct samples (RFT keeps them), 3 + 3 DPO pairs
PLANNED = {name: planned_scenario(name, [[1, 0, 1, 1, 0, 1, 0, 0]])[0] for name in ("rft", "dpo")}
# the RFT step with sequence parallelism at TP=2 (rows padded to a multiple of 16, as the loop does)
PLANNED_SP = {"rft": planned_scenario("rft", [[1, 0, 1, 1, 0, 1, 0, 0]], multiple_of=16)[0]}
PPO_SP = planned_scenario("ppo", [[1, 0, 1, 1, 0, 1, 0, 0]], multiple_of=16)[0]


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
    # given the response mask, the log-probs and entropies of the other targets are 0
    mask = batch.mask
    assert (~mask).any() and mask.any()
    for key in ("logp", "entropy"):
        got, full = out[f"response_{key}"], out[key]
        torch.testing.assert_close(got[mask], full[mask], rtol=1e-5, atol=1e-6, msg=key)
        assert torch.equal(got[~mask], torch.zeros_like(got[~mask])), key
    assert out["metrics"]["clip_frac_low"] > 0 and out["metrics"]["clip_frac_high"] > 0
    assert torch.equal(out["adv"][:GROUP], torch.zeros(GROUP))  # the all-equal group
    torch.testing.assert_close(out["adv"].double(), adv, rtol=1e-5, atol=1e-6)
    assert abs(out["loss"] - float(loss)) <= 1e-5 * max(1.0, abs(float(loss)))
    assert set(out["grads"]) == set(grads)
    for name, g in grads.items():
        torch.testing.assert_close(out["grads"][name].double(), g, rtol=1e-4, atol=1e-6, msg=name)


def test_full_activation_recompute_gives_the_same_grpo_step(parallel_teardown):
    """``train.recompute: full`` (each layer recomputed in backward) changes memory, not the
    step: the loss and every gradient equal those of the step that keeps its activations."""
    from dsm_engine.models.parallel import destroy_parallel

    state = initial_state(0)
    batch = random_batch(seed=5, groups=2, group_size=GROUP)
    want = grpo_step_outputs(state, batch, tp=1)
    destroy_parallel()
    got = grpo_step_outputs(state, batch, tp=1, recompute="full")
    assert got["layer_forwards"] == 2 * want["layer_forwards"] > 0  # it did recompute
    assert abs(got["loss"] - want["loss"]) <= 1e-6 * max(1.0, abs(want["loss"]))
    assert set(got["grads"]) == set(want["grads"])
    for name, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-6, atol=1e-7, msg=name)


def _torchrun_worker(
    torchrun, tmp_path: Path, state, batch, tp: int, pp: int, **sequence_parallel: dict
) -> dict:
    """Run step_worker.py under ``torchrun --nproc_per_node 2`` (gloo, fp32); rank 0's outputs.
    ``sequence_parallel``: ``planned_sp`` and ``ppo`` scenarios to step with it."""
    data = {"state": state, "batch": batch, "planned": PLANNED, **sequence_parallel}
    torch.save(data, tmp_path / "in.pt")
    out = tmp_path / f"tp{tp}pp{pp}.pt"
    torchrun(HERE / "step_worker.py", tmp_path / "in.pt", out, tp, pp, timeout=600)
    return torch.load(out, weights_only=False)


def _assert_same_step(got: dict, want: dict, state: dict) -> None:
    # rank 0 is the sampler rank: it received the whole model, shards and stages joined
    assert set(got["sampler_sd"]) == set(state)
    for name, w in state.items():
        assert torch.equal(got["sampler_sd"][name], w), name
    for key in ("logp", "entropy", "response_logp", "response_entropy", "adv"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert abs(got["loss"] - want["loss"]) <= 1e-5 * max(1.0, abs(want["loss"]))
    assert set(got["grads"]) == set(want["grads"])
    for name, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)


def _assert_same_planned_steps(got: dict, state: dict, planned: dict = PLANNED) -> None:
    """The steps of ``planned`` (RFT and DPO) in a parallel layout (``got``) equal TP=1,
    PP=1's, and the TP ranks' copies of the norm weights are still equal."""
    from dsm_engine.models.parallel import destroy_parallel

    assert set(got) == set(planned)
    for key, scenario in planned.items():
        want = planned_step_outputs(state, scenario)
        destroy_parallel()
        mine = got[key]
        assert mine.get("tp_replica_spread", 0.0) == 0.0, key
        assert mine["metrics"]["update_skipped"] == 0.0 and want["metrics"]["grad_norm"] > 0
        for k in ("loss", "grad_norm", "kl_mean"):
            assert abs(mine["metrics"][k] - want["metrics"][k]) <= 1e-5 * max(
                1.0, abs(want["metrics"][k])
            ), (key, k)
        for name, g in want["grads"].items():
            msg = f"{key}: {name}"
            torch.testing.assert_close(mine["grads"][name], g, rtol=1e-5, atol=5e-6, msg=msg)
            assert_same_adam_step(mine["params"][name], want["params"][name], g, msg)


def _assert_same_ppo_step(got: dict, state: dict) -> None:
    """PPO's step at TP=2 with sequence parallelism (``got``) equals TP=1's: the policy's and
    the critic's gradients and parameters after their AdamW steps, and both models' TP
    replicas are still equal."""
    from dsm_engine.models.parallel import destroy_parallel

    want = ppo_step_outputs(state, PPO_SP)
    destroy_parallel()
    assert got["tp_replica_spread"] == 0.0
    for k in ("loss", "value_loss", "critic_grad_norm", "kl_mean", "explained_variance"):
        w = want["metrics"][k]
        assert abs(got["metrics"][k] - w) <= 1e-5 * max(1.0, abs(w)), k
    for kind in ("", "critic_"):
        assert set(got[f"{kind}grads"]) == set(want[f"{kind}grads"])
        for name, g in want[f"{kind}grads"].items():
            msg = f"{kind}{name}"
            scale = max(1.0, float(g.abs().max()))
            torch.testing.assert_close(
                got[f"{kind}grads"][name], g, rtol=1e-5, atol=5e-6 * scale, msg=msg
            )
            assert_same_adam_step(got[f"{kind}params"][name], want[f"{kind}params"][name], g, msg)


@pytest.mark.dist
def test_tp2_grpo_step_equals_tp1(tmp_path, parallel_teardown, torchrun):
    state = initial_state(1)
    batch = random_batch(seed=5, groups=2, group_size=GROUP)
    tp2 = _torchrun_worker(
        torchrun, tmp_path, state, batch, tp=2, pp=1, planned_sp=PLANNED_SP, ppo=PPO_SP
    )
    _assert_same_step(tp2, grpo_step_outputs(state, batch, tp=1), state)
    # RFT's 4 kept rows run in microbatches of 3 + 1: with one row per microbatch the
    # gradient below the lm_head came out doubled under TP (all-reduced twice)
    _assert_same_planned_steps(tp2["planned"], state)
    # with sequence parallelism each TP rank's norm weights see half the tokens: the
    # optimizer sums their gradients over TP, or the step differs and the replicas drift
    _assert_same_planned_steps(tp2["planned_sp"], state, PLANNED_SP)
    # PPO's step (policy and critic, each with its own optimizer) likewise
    _assert_same_ppo_step(tp2["ppo_sp"], state)


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_grpo_step_equals_pp1(tmp_path, parallel_teardown, torchrun):
    """Each stage holds one of the two layers; 8 rows in microbatches of 5 + 3 run through the
    1F1B schedule. Log-probs, entropy, loss and every gradient match PP=1, and so do the loss,
    grad norm and parameters after two clipped AdamW updates (μ = 2). The RFT and DPO steps
    (4 kept rows in microbatches of 3 + 1; all 8 for DPO) equal PP=1's too."""
    state = initial_state(2)
    batch = random_batch(seed=6, groups=2, group_size=GROUP)
    pp2 = _torchrun_worker(torchrun, tmp_path, state, batch, tp=1, pp=2)
    pp1 = grpo_step_outputs(state, batch, tp=1, updates=True)
    _assert_same_step(pp2, pp1, state)
    got, want = pp2["updates"], pp1["updates"]
    assert want["grad_norm"] > 0 and abs(want["loss"]) > 0
    for key in ("loss", "grad_norm"):
        assert abs(got[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), key
    for key, value in want["metrics"].items():
        assert abs(got["metrics"][key] - value) <= 1e-5 * max(1.0, abs(value)), key
    assert set(got["params"]) == set(want["params"])
    moved = 0
    for name, w in want["params"].items():
        torch.testing.assert_close(got["params"][name], w, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(w, state[name]))
    assert moved == len(state)  # every tensor took the two steps
    _assert_same_planned_steps(pp2["planned"], state)
