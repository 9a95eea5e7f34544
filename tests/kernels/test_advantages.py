"""Group-relative advantages (outcome and process supervision) against direct fp64 formulas."""

from __future__ import annotations

import zlib

import pytest
import torch

import dsm_engine.kernels  # noqa: F401  (selects Triton's interpreter without CUDA)
from dsm_engine.kernels.advantages import (
    group_advantages,
    group_advantages_op,
    process_advantages,
    process_advantages_op,
)

F64 = torch.float64


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded differently for every test case (reproducible by test id)."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def outcome_formula(rewards: list[float], group: int) -> list[float]:
    """The paper's outcome advantage, written out in Python floats (fp64)."""
    out = []
    for start in range(0, len(rewards), group):
        rs = rewards[start : start + group]
        mean = sum(rs) / group
        std = (sum((r - mean) ** 2 for r in rs) / group) ** 0.5
        equal = max(rs) == min(rs)
        out += [0.0 if equal else (r - mean) / (std + 1e-6) for r in rs]
    return out


def process_formula(rewards, ends, mask, group, seq_len) -> list[list[float]]:
    """The paper's process advantage (§4.1.3), written out in Python floats (fp64)."""
    batch, steps = len(rewards), len(rewards[0])
    out = []
    for start in range(0, batch, group):
        rows = range(start, start + group)
        vals = [rewards[i][j] for i in rows for j in range(steps) if mask[i][j]]
        mean = sum(vals) / len(vals) if vals else 0.0
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5 if vals else 0.0
        equal = not vals or max(vals) == min(vals)
        for i in rows:
            norm = [
                0.0 if equal or not mask[i][j] else (rewards[i][j] - mean) / (std + 1e-6)
                for j in range(steps)
            ]
            out.append(
                [
                    sum(norm[j] for j in range(steps) if mask[i][j] and ends[i][j] >= t)
                    for t in range(seq_len)
                ]
            )
    return out


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("batch,group", [(1, 1), (4, 1), (6, 3), (12, 4), (8, 8)])
def test_group_advantages_match_the_formula(gen, batch, group, impl):
    rewards = torch.randn(batch, generator=gen, dtype=F64)
    if batch >= 2 * group and group > 1:
        rewards[group : 2 * group] = 0.25  # one group with equal rewards
    want = torch.tensor(outcome_formula(rewards.tolist(), group), dtype=F64)
    got = group_advantages(rewards.float(), group, impl=impl)
    assert got.dtype == torch.float32 and got.shape == (batch,)
    torch.testing.assert_close(got.to(F64), want, rtol=1e-5, atol=2e-6)
    if batch >= 2 * group and group > 1:
        assert (got[group : 2 * group] == 0).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_equal_binary_rewards_give_exactly_zero(impl):
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1])
    assert (group_advantages(rewards, 3, impl=impl) == 0).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize(
    "batch,steps,seq_len,group",
    [(1, 1, 1, 1), (4, 3, 7, 2), (6, 5, 33, 3), (4, 40, 150, 4)],
)
def test_process_advantages_match_the_formula(gen, batch, steps, seq_len, group, impl):
    rewards = torch.randn(batch, steps, generator=gen, dtype=F64)
    ends = torch.randint(0, seq_len, (batch, steps), generator=gen)
    ends, _ = ends.sort(dim=1)
    mask = torch.rand(batch, steps, generator=gen) > 0.3
    if batch > 1:
        mask[1] = False  # a sample without steps
    if batch >= 2 * group and group > 1:
        rewards[group : 2 * group] = -0.5  # a group whose valid rewards are all equal
    want = torch.tensor(
        process_formula(rewards.tolist(), ends.tolist(), mask.tolist(), group, seq_len),
        dtype=F64,
    )
    got = process_advantages(rewards.float(), ends, mask, group, seq_len, impl=impl)
    assert got.dtype == torch.float32 and got.shape == (batch, seq_len)
    torch.testing.assert_close(got.to(F64), want, rtol=1e-5, atol=1e-5)
    if batch > 1:
        assert (got[1] == 0).all()
    if batch >= 2 * group and group > 1:
        assert (got[group : 2 * group] == 0).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_one_final_step_reduces_to_outcome_supervision(gen, impl):
    batch, group, seq_len = 6, 3, 9
    rewards = torch.randn(batch, generator=gen)
    got = process_advantages(
        rewards[:, None],
        torch.full((batch, 1), seq_len - 1),
        torch.ones(batch, 1, dtype=torch.bool),
        group,
        seq_len,
        impl=impl,
    )
    want = group_advantages(rewards, group, impl="torch")[:, None].expand(batch, seq_len)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("group_size", dict(group_size=4)),
        ("group_size", dict(group_size=0)),
        ("rewards", dict(rewards=torch.zeros(6, 1))),
        ("rewards", dict(rewards=torch.zeros(6, dtype=torch.int64))),
        ("impl", dict(impl="gpu")),
    ],
)
def test_group_advantages_bad_input(name, kwargs):
    args = dict(rewards=torch.zeros(6), group_size=3) | kwargs
    with pytest.raises(ValueError, match=name):
        group_advantages(args.pop("rewards"), args.pop("group_size"), **args)


def _process_args(**changes):
    args = dict(
        step_rewards=torch.zeros(4, 3),
        step_ends=torch.zeros(4, 3, dtype=torch.int64),
        step_mask=torch.ones(4, 3, dtype=torch.bool),
        group_size=2,
        seq_len=5,
    )
    return args | changes


@pytest.mark.parametrize(
    "name,changes",
    [
        ("step_ends", dict(step_ends=torch.zeros(4, 2, dtype=torch.int64))),
        ("step_mask", dict(step_mask=torch.ones(3, 3, dtype=torch.bool))),
        ("step_mask", dict(step_mask=torch.ones(4, 3, dtype=torch.bool, device="meta"))),
        ("step_ends", dict(step_ends=torch.zeros(4, 3))),
        ("step_ends", dict(step_ends=torch.full((4, 3), 5))),
        ("step_ends", dict(step_ends=torch.full((4, 3), -1))),
        ("step_rewards", dict(step_rewards=torch.zeros(4))),
        ("group_size", dict(group_size=3)),
        ("seq_len", dict(seq_len=0)),
    ],
)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_process_advantages_bad_input(name, changes, impl):
    with pytest.raises(ValueError, match=name):
        process_advantages(**_process_args(**changes), impl=impl)


def test_out_of_range_ends_of_invalid_steps_are_ignored():
    args = _process_args(step_ends=torch.full((4, 3), 99))
    args["step_mask"] = torch.zeros(4, 3, dtype=torch.bool)
    assert (process_advantages(**args, impl="triton") == 0).all()


def test_library_ops_pass_opcheck(gen):
    torch.library.opcheck(group_advantages_op, (torch.randn(6, generator=gen), 3, 1e-6))
    rewards = torch.randn(4, 3, generator=gen)
    ends = torch.randint(0, 5, (4, 3), generator=gen)
    mask = torch.rand(4, 3, generator=gen) > 0.3
    torch.library.opcheck(process_advantages_op, (rewards, ends, mask, 2, 5, 1e-6))


@pytest.mark.gpu
def test_gpu_process_advantages_match_the_torch_path(gen):
    batch, steps, seq_len, group = 64, 24, 1024, 16
    rewards = torch.randn(batch, steps, generator=gen).cuda()
    ends = torch.randint(0, seq_len, (batch, steps), generator=gen).cuda()
    mask = (torch.rand(batch, steps, generator=gen) > 0.3).cuda()
    got = process_advantages(rewards, ends, mask, group, seq_len, impl="auto")
    want = process_advantages(rewards.double(), ends, mask, group, seq_len, impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got = group_advantages(rewards[:, 0], group, impl="auto")
    want = group_advantages(rewards[:, 0].double(), group, impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
