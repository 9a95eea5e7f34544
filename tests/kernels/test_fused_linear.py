"""fused_linear_logprobs and fused_linear_grpo_loss against materialised float64 references."""

from __future__ import annotations

import pytest
import torch
from _kernel_checks import TOL, assert_close_to_ref, max_err

from dsm_engine.kernels import (
    _logsoftmax,
    default_chunk_size,
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    fused_linear_logprobs,
    fused_linear_logprobs_ref,
    grpo_loss,
    logprobs_from_logits,
)
from dsm_engine.kernels.grpo_loss import grpo_loss_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(_logsoftmax, "MAX_BLOCK_V", 128)


def _seed(*key) -> torch.Generator:
    return torch.Generator().manual_seed(hash(tuple(str(k) for k in key)) % 2**31)


def _head(n, h, v, dtype, gen):
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * (3 / h**0.5)).to(dtype)
    return hidden, weight


def _materialised_at_dtype(hidden, weight, targets, temperature, entropy):
    """Plain PyTorch at the inputs' dtype (the low-precision baseline)."""
    lp_all = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)
    lp = lp_all.gather(1, targets[:, None]).squeeze(1)
    return lp, (-(lp_all.exp() * lp_all).sum(-1) if entropy else None)


# (N, H, V, chunk, temperature, entropy)
LOGPROB_CASES = {
    "N=1": (1, 16, 37, None, 1.0, False),
    "ragged-chunks-V-not-block-multiple": (13, 24, 300, 4, 1.0, True),
    "temperature": (8, 16, 200, 3, 0.6, True),
}


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LOGPROB_CASES.values(), ids=LOGPROB_CASES.keys())
def test_fused_linear_logprobs_matches_fp64_reference(case, dtype, impl):
    n, h, v, chunk, temp, entropy = case
    gen = _seed(case, dtype, impl)
    hidden, weight = _head(n, h, v, dtype, gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)

    def run(fn, hd, wt, gl, ge):
        hd, wt = hd.detach().requires_grad_(), wt.detach().requires_grad_()
        lp, ent = fn(hd, wt)
        loss = (lp * gl).sum() + ((ent * ge).sum() if entropy else 0)
        return (lp, ent, *torch.autograd.grad(loss, (hd, wt)))

    out = run(
        lambda a, b: fused_linear_logprobs(
            a, b, targets, temperature=temp, return_entropy=True, chunk_size=chunk, impl=impl
        ),
        hidden,
        weight,
        g_lp,
        g_ent,
    )
    ref = run(
        lambda a, b: fused_linear_logprobs_ref(
            a, b, targets, temperature=temp, return_entropy=True
        ),
        hidden.double(),
        weight.double(),
        g_lp.double(),
        g_ent.double(),
    )
    base = run(
        lambda a, b: _materialised_at_dtype(a, b, targets, temp, True),
        hidden,
        weight,
        g_lp.to(dtype),
        g_ent.to(dtype),
    )
    assert out[0].dtype == torch.float32 and out[0].shape == (n,)
    for i, name in enumerate(["logp", "entropy", "grad_hidden", "grad_weight"]):
        if name == "entropy" and not entropy:
            continue
        assert_close_to_ref(name, out[i], ref[i], base[i], dtype)


def _grpo_inputs(b, t, h, v, dtype, gen, *, far_ratios=True):
    hidden, weight = _head(b * t, h, v, dtype, gen)
    targets = torch.randint(0, v, (b * t,), generator=gen)
    with torch.no_grad():
        logp = fused_linear_logprobs_ref(hidden.double(), weight.double(), targets).float()
    old = logp + 0.15 * torch.randn(b * t, generator=gen)
    if far_ratios:  # ratios far outside the clip range on both sides
        old[::5] += 3.0
        old[1::5] -= 3.0
    ref = logp + 0.1 * torch.randn(b * t, generator=gen)
    mask = torch.rand(b, t, generator=gen) > 0.25
    mask[0] = True
    mask[-1] = False  # a fully masked row
    return (
        hidden.reshape(b, t, h),
        weight,
        targets.reshape(b, t),
        old.reshape(b, t),
        ref.reshape(b, t),
        mask,
    )


GRPO_CASES = {
    "seq-mean-token-mean+rewards-with-equal-group": dict(
        loss_agg="seq-mean-token-mean", rewards=[1.0, 0.0, 1.0, 0.5, 0.5, 0.5], group_size=3
    ),
    "token-mean+seq-advantages": dict(loss_agg="token-mean", advantages="seq"),
    "seq-mean-token-sum+token-advantages+beta0": dict(
        loss_agg="seq-mean-token-sum", advantages="token", beta=0.0
    ),
    "dr-grpo+asymmetric-clip+temperature": dict(
        loss_agg="seq-mean-token-sum-norm",
        advantages="seq",
        clip_eps_low=0.1,
        clip_eps_high=0.28,
        temperature=0.8,
    ),
}


def _grpo_kwargs(spec, b, t, gen):
    kw = dict(spec)
    if kw.get("advantages") == "seq":
        kw["advantages"] = torch.randn(b, generator=gen)
    elif kw.get("advantages") == "token":
        kw["advantages"] = torch.randn(b, t, generator=gen)
    if "rewards" in kw:
        kw["rewards"] = torch.tensor(kw["rewards"])
    return kw


def _with_dtype(kw, dtype):
    return {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spec", GRPO_CASES.values(), ids=GRPO_CASES.keys())
def test_fused_linear_grpo_loss_matches_materialised_reference(spec, dtype, impl):
    b, t, h, v = 6, 5, 16, 200
    gen = _seed(spec, dtype, impl)
    hidden, weight, targets, old, ref, mask = _grpo_inputs(b, t, h, v, dtype, gen)
    kw = _grpo_kwargs(spec, b, t, gen)
    temp = kw.get("temperature", 1.0)

    hd, wt = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss, metrics = fused_linear_grpo_loss(
        hd, wt, targets, old, ref, mask, chunk_size=7, impl=impl, **kw
    )
    loss.backward()

    hr = hidden.detach().double().requires_grad_()
    wr = weight.detach().double().requires_grad_()
    loss_r, metrics_r = fused_linear_grpo_loss_ref(
        hr, wr, targets, old.double(), ref.double(), mask, **_with_dtype(kw, torch.float64)
    )
    loss_r.backward()

    hb, wb = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    logp_b, _ = _materialised_at_dtype(hb.reshape(b * t, h), wb, targets.reshape(-1), temp, False)
    grpo_kw = {k: x for k, x in kw.items() if k != "temperature"}
    loss_b, _ = grpo_loss_ref(logp_b.reshape(b, t), old.to(dtype), ref.to(dtype), mask, **grpo_kw)
    loss_b.backward()

    assert loss.dtype == torch.float32 and loss.dim() == 0
    if dtype == torch.float32:
        assert_close_to_ref("loss", loss, loss_r, loss_b, dtype)
    else:
        # One scalar's error is a single random draw (a lucky baseline can land near the
        # truth), so bound it by first-order propagation of 2x the baseline's worst per-token
        # log-prob error: |d loss| <= sum_t |dloss/dlogp_t| * max_t |d logp_t|.
        lr = fused_linear_logprobs_ref(
            hr.detach().reshape(b * t, h), wr.detach(), targets.view(-1), temperature=temp
        )
        lr = lr.reshape(b, t).requires_grad_()
        (dl,) = torch.autograd.grad(
            grpo_loss_ref(
                lr, old.double(), ref.double(), mask, **_with_dtype(grpo_kw, torch.float64)
            )[0],
            lr,
        )
        sens = dl.abs().sum().item()
        base = max(max_err(loss_b, loss_r), sens * max_err(logp_b.reshape(b, t), lr))
        err = max_err(loss, loss_r)
        assert err <= 2 * base + TOL[dtype] * max(1.0, abs(loss_r.item())), (err, base)
    assert_close_to_ref("grad_hidden", hd.grad, hr.grad, hb.grad, dtype)
    assert_close_to_ref("grad_weight", wt.grad, wr.grad, wb.grad, dtype)
    assert set(metrics) == set(metrics_r)
    if dtype == torch.float32:
        for k in metrics:
            torch.testing.assert_close(metrics[k], metrics_r[k].float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", GRPO_CASES.values(), ids=GRPO_CASES.keys())
def test_fused_grpo_loss_equals_grpo_loss_of_logprobs_from_logits(spec):
    b, t, h, v = 4, 6, 16, 150
    gen = _seed("compose", spec)
    hidden, weight, targets, old, ref, mask = _grpo_inputs(b, t, h, v, torch.float32, gen)
    kw = _grpo_kwargs(
        {**spec, "rewards": [1.0, 0.0, 0.5, 0.5]} if "rewards" in spec else spec, b, t, gen
    )
    if "group_size" in kw:
        kw["group_size"] = 2
    temp = kw.pop("temperature", 1.0)
    hd, wt = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss, metrics = fused_linear_grpo_loss(
        hd, wt, targets, old, ref, mask, temperature=temp, chunk_size=5, impl="triton", **kw
    )
    loss.backward()
    h2, w2 = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    logits = h2.reshape(b * t, h) @ w2.T
    logp = logprobs_from_logits(logits, targets.view(-1), temperature=temp, impl="triton")
    loss2, metrics2 = grpo_loss(logp.view(b, t), old, ref, mask, impl="triton", **kw)
    loss2.backward()
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-6)
    for k in metrics2:
        torch.testing.assert_close(metrics[k], metrics2[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hd.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wt.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_fused_grpo_loss_without_grad_matches_with_grad():
    gen = _seed("nograd")
    hidden, weight, targets, old, ref, mask = _grpo_inputs(4, 6, 16, 100, torch.float32, gen)
    kw = {"rewards": torch.tensor([1.0, 0.0, 0.0, 1.0]), "group_size": 2}
    with torch.no_grad():
        a, ma = fused_linear_grpo_loss(hidden, weight, targets, old, ref, mask, impl="triton", **kw)
    w = weight.detach().requires_grad_()
    b, mb = fused_linear_grpo_loss(hidden, w, targets, old, ref, mask, impl="triton", **kw)
    torch.testing.assert_close(a, b.detach())
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k])


def test_backward_scales_by_the_incoming_gradient():
    gen = _seed("scale")
    hidden, weight, targets, old, ref, mask = _grpo_inputs(2, 4, 8, 50, torch.float32, gen)
    kw = {"advantages": torch.tensor([0.5, -1.0]), "impl": "triton", "chunk_size": 3}
    grads = []
    for scale in (1.0, -2.5):
        w = weight.detach().requires_grad_()
        loss, _ = fused_linear_grpo_loss(hidden, w, targets, old, ref, mask, **kw)
        (loss * scale).backward()
        grads.append(w.grad / scale)
    torch.testing.assert_close(grads[0], grads[1])


def test_default_chunk_size_keeps_chunk_logits_no_larger_than_hidden():
    n, h, v = 8192, 4096, 102400
    c = default_chunk_size(n, h, v)
    assert c == 256 and c * v <= n * h
    assert default_chunk_size(5, 8, 1000) == 5  # never more rows than there are
    assert default_chunk_size(4096, 16, 1000) == 64  # largest power of two under N*H/V


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden": torch.zeros(2, 3, 5)}, "hidden's last dim 5 must equal weight's dim 1 4"),
        ({"hidden": torch.zeros(6, 4)}, "hidden must be 3-D"),
        ({"weight": torch.zeros(10, 4, dtype=torch.float16)}, "weight dtype"),
        ({"targets": torch.full((2, 3), 10)}, r"targets must lie in \[0, 10\)"),
        ({"targets": torch.zeros(3, 2, dtype=torch.long)}, "targets must have shape"),
        ({"old_logp": torch.zeros(2, 4)}, "old_logp must have shape"),
        ({"mask": torch.ones(3, 3)}, "mask must have shape"),
        ({"loss_agg": "sum"}, "loss_agg must be one of"),
        ({"advantages": None, "rewards": torch.ones(2), "group_size": 4}, "group_size=4"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"weight": torch.zeros(10, 4, device="meta")}, "weight is on meta"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, match):
    args = {
        "hidden": torch.zeros(2, 3, 4),
        "weight": torch.zeros(10, 4),
        "targets": torch.zeros(2, 3, dtype=torch.long),
        "old_logp": torch.zeros(2, 3),
        "ref_logp": torch.zeros(2, 3),
        "mask": torch.ones(2, 3),
        "advantages": torch.ones(2),
        "impl": "triton",
    }
    args.update(change)
    pos = [args.pop(k) for k in ("hidden", "weight", "targets", "old_logp", "ref_logp", "mask")]
    with pytest.raises(ValueError, match=match):
        fused_linear_grpo_loss(*pos, **args)


@pytest.mark.gpu
def test_deepseekmath_head_shape_on_gpu():
    b, t, h, v = 4, 256, 4096, 102400
    gen = torch.Generator(device="cuda").manual_seed(7)
    hidden = torch.randn(b, t, h, device="cuda", generator=gen).bfloat16()
    weight = (torch.randn(v, h, device="cuda", generator=gen) * (3 / h**0.5)).bfloat16()
    targets = torch.randint(0, v, (b, t), device="cuda", generator=gen)
    with torch.no_grad():
        logp = fused_linear_logprobs(
            hidden.reshape(-1, h).float(), weight.float(), targets.view(-1)
        )
    old = (logp + 0.1 * torch.randn_like(logp)).view(b, t)
    ref = (logp + 0.1 * torch.randn_like(logp)).view(b, t)
    mask = torch.rand(b, t, device="cuda", generator=gen) > 0.2
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], device="cuda")
    kw = {"rewards": rewards, "group_size": 2}

    hd, wt = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = fused_linear_grpo_loss(hd, wt, targets, old, ref, mask, **kw)
    loss.backward()
    hr, wr = hidden.double().requires_grad_(), weight.double().requires_grad_()
    kw64 = {"rewards": rewards.double(), "group_size": 2}
    loss_r, _ = fused_linear_grpo_loss_ref(
        hr, wr, targets, old.double(), ref.double(), mask, **kw64
    )
    loss_r.backward()
    hb, wb = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp_b, _ = _materialised_at_dtype(hb.view(-1, h), wb, targets.view(-1), 1.0, False)
    loss_b, _ = grpo_loss_ref(lp_b.view(b, t), old.bfloat16(), ref.bfloat16(), mask, **kw)
    loss_b.backward()
    assert_close_to_ref("loss", loss, loss_r, loss_b, torch.bfloat16)
    assert_close_to_ref("grad_hidden", hd.grad, hr.grad, hb.grad, torch.bfloat16)
    assert_close_to_ref("grad_weight", wt.grad, wr.grad, wb.grad, torch.bfloat16)
