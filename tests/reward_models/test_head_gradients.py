"""ORM/PRM losses and the scalar head's gradients equal a plain fp64 PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.reward_models.losses import (
    bce_at_positions,
    bce_at_positions_ref,
    orm_loss,
    prm_loss,
)


@pytest.fixture(scope="module")
def reward_model():
    from dsm_engine.models import ParallelConfig, initialize_parallel, model_config
    from dsm_engine.reward_models.model import build_reward_model

    ctx = initialize_parallel(ParallelConfig(), seed=11)
    model = build_reward_model(model_config("tiny", seq_length=24), ctx)
    with torch.no_grad():  # a non-trivial head so positives and negatives differ
        model.score_head.weight.normal_(0, 0.5)
        model.score_head.bias.fill_(0.3)
    yield model
    from dsm_engine.models import destroy_parallel

    destroy_parallel()


def _run(model, kind):
    from dsm_engine.reward_models.model import reward_scores

    g = torch.Generator().manual_seed(3 if kind == "orm" else 4)
    b, t = 4, 24
    ids = torch.randint(3, 256, (b, t), generator=g)
    captured = {}

    def hook(_, __, out):
        out.retain_grad()
        captured["h"] = out

    handle = model.decoder.register_forward_hook(hook)  # final-normed hidden [s, b, h]
    model.zero_grad(set_to_none=True)
    scores = reward_scores(model, ids)
    handle.remove()
    if kind == "orm":
        last = torch.tensor([23, 10, 17, 5])
        labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
        loss_sum, count = orm_loss(scores, last, labels)
        pos, lab, mask = last[:, None], labels[:, None], None
    else:
        pos = torch.tensor([[3, 9, 23], [5, 0, 0], [2, 4, 6], [7, 15, 0]])
        lab = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0, 0], [1.0, 1.0, 0.0], [0.0, 1.0, 0]])
        mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
        loss_sum, count = prm_loss(scores, pos, lab, mask)
    (loss_sum / count).backward()
    return captured["h"], pos, lab, mask, loss_sum / count


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_head_gradients_match_fp64_reference(reward_model, kind):
    model = reward_model
    hidden, pos, lab, mask, loss = _run(model, kind)
    # reference: scores = h @ w + b in fp64 from the same hidden states, loss written out
    h = hidden.detach().double().transpose(0, 1).clone().requires_grad_(True)  # (b, s, h)
    w = model.score_head.weight.detach().double().clone().requires_grad_(True)
    bias = model.score_head.bias.detach().double().clone().requires_grad_(True)
    z = (h @ w.T + bias).squeeze(-1)
    ref_sum, ref_count = bce_at_positions_ref(z, pos, lab, mask)
    ref = ref_sum / ref_count
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(model.score_head.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.score_head.bias.grad.double(), bias.grad, rtol=1e-4, atol=1e-6)
    # the gradient reaching the backbone (d loss / d hidden) matches too
    torch.testing.assert_close(hidden.grad.double().transpose(0, 1), h.grad, rtol=1e-4, atol=1e-7)
    # positions without a label get no gradient
    touched = h.grad.abs().sum(-1) > 0
    expect = torch.zeros_like(touched)
    for i in range(pos.shape[0]):
        for j in range(pos.shape[1]):
            if mask is None or mask[i, j]:
                expect[i, pos[i, j]] = True
    assert torch.equal(touched, expect)


def test_bce_at_positions_matches_reference_fp64():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(0, 12, (5, 3), generator=g)
    lab = torch.rand(5, 3, generator=g, dtype=torch.float64)  # soft labels too
    mask = torch.rand(5, 3, generator=g) > 0.3
    s, c = bce_at_positions(scores, pos, lab, mask)
    (gs,) = torch.autograd.grad(s, scores)
    sr, cr = bce_at_positions_ref(scores, pos, lab, mask)
    (gr,) = torch.autograd.grad(sr, scores)
    assert float(c) == float(cr)
    torch.testing.assert_close(s, sr)
    torch.testing.assert_close(gs, gr)


def test_bad_positions_are_named():
    with pytest.raises(ValueError, match="positions must lie"):
        bce_at_positions(torch.zeros(2, 4), torch.tensor([[4], [0]]), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="integer"):
        bce_at_positions(torch.zeros(2, 4), torch.zeros(2, 1), torch.zeros(2, 1))
