"""DPO as a gradient coefficient: pairs come from groups with both a correct and a wrong
sample; the coefficient is the negative gradient of the DPO loss (checked against autograd of
an independent float64 implementation), and fed through the GRPO loss with the current policy
as π_old it reproduces the DPO loss's gradient in the parameters."""

from __future__ import annotations

import torch

from dsm_engine.grpo.algorithms import AlgorithmConfig, CoefficientInputs, LossSettings, coefficient
from dsm_engine.grpo.dpo import dpo_coefficient, dpo_loss, select_pairs, sequence_logp
from dsm_engine.kernels import GRPOLossOptions, grpo_loss

BETA = 0.3


def test_pairs_are_correct_vs_wrong_within_a_group():
    correct = torch.tensor([True, False, False, True] + [True] * 4 + [False, True, False, False])
    pairs = select_pairs(correct, 4, seed=0)
    assert pairs.shape == (2, 2)  # the all-correct group gives none
    for chosen, rejected in pairs.tolist():
        assert correct[chosen] and not correct[rejected] and chosen // 4 == rejected // 4
    every = select_pairs(correct, 4, pairs_per_prompt=10, seed=0)
    assert sorted(map(tuple, every.tolist())) == [
        (0, 1),
        (0, 2),
        (3, 1),
        (3, 2),
        (9, 8),
        (9, 10),
        (9, 11),
    ]
    assert torch.equal(select_pairs(correct, 4, seed=0), pairs)  # seeded
    assert select_pairs(torch.zeros(4, dtype=torch.bool), 4).shape == (0, 2)


def dpo_loss_fp64(policy, ref, pairs, beta):
    """-mean log σ(β[(π(o+) - ref(o+)) - (π(o-) - ref(o-))]), σ(z) = 1 / (1 + e^-z)."""
    total = 0.0
    for c, r in pairs.tolist():
        z = beta * ((policy[c] - ref[c]) - (policy[r] - ref[r]))
        total = total - torch.log(1.0 / (1.0 + torch.exp(-z)))
    return total / len(pairs)


def test_coefficient_is_the_negative_gradient_of_the_dpo_loss():
    g = torch.Generator().manual_seed(0)
    policy = (-5 * torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_()
    ref = -5 * torch.rand(6, generator=g, dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [0, 2], [4, 3]])  # row 0 in two pairs, row 5 in none
    dpo_loss_fp64(policy, ref, pairs, BETA).backward()
    coef = dpo_coefficient(policy.detach(), ref, pairs, BETA)
    torch.testing.assert_close(coef.double(), -policy.grad, rtol=1e-6, atol=1e-7)
    assert coef[5] == 0
    loss, _ = dpo_loss(policy.detach(), ref, pairs, BETA)
    torch.testing.assert_close(loss.double(), dpo_loss_fp64(policy.detach(), ref, pairs, BETA))


def test_coefficient_times_grad_logp_is_the_dpo_gradient():
    """A toy policy: free logits per position; responses right after a one-token prompt."""
    g = torch.Generator().manual_seed(1)
    b, t, v = 6, 5, 7
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, 0] = False
    mask[1, 3:] = False
    mask[4, 2:] = False
    ref_logp = -torch.rand(b, t, generator=g, dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [2, 3], [2, 4]])

    def token_logp():
        return torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)

    # autograd of the DPO loss itself
    loss = dpo_loss_fp64(
        sequence_logp(token_logp(), mask), sequence_logp(ref_logp, mask), pairs, BETA
    )
    want = torch.autograd.grad(loss, logits)[0]

    logp = token_logp()
    x = CoefficientInputs(
        rewards=torch.zeros(b),
        mask=mask,
        group_size=1,
        old_logp=logp.detach(),
        ref_logp=ref_logp,
        pairs=pairs,
    )
    c = coefficient(
        AlgorithmConfig(name="dpo", dpo_beta=BETA),
        x,
        LossSettings(0.04, 0.2, 0.2, "seq-mean-token-mean"),
    )
    # the paper's form: -Σ_b GC_b Σ_t ∇ log π(o_b,t), with GC over the pairs' rows
    rows = c.rows.nonzero().flatten()
    assert rows.tolist() == [0, 1, 2, 3, 4]
    direct = -(c.advantages.double()[rows] / len(rows) * sequence_logp(logp, mask)[rows]).sum()
    torch.testing.assert_close(torch.autograd.grad(direct, logits)[0], want, rtol=1e-5, atol=1e-8)
    # the same through the GRPO loss (ratio 1, no KL, no clipping, seq-mean-token-sum)
    opts = GRPOLossOptions(
        beta=c.loss.beta,
        clip_eps_low=c.loss.clip_eps_low,
        clip_eps_high=c.loss.clip_eps_high,
        loss_agg=c.loss.loss_agg,
    )
    logp = token_logp()  # a fresh graph
    fused, _ = grpo_loss(
        logp[rows],
        logp.detach()[rows],
        ref_logp[rows],
        mask[rows],
        advantages=c.advantages.double()[rows],
        options=opts,
        impl="torch",
    )
    torch.testing.assert_close(torch.autograd.grad(fused, logits)[0], want, rtol=1e-5, atol=1e-8)
