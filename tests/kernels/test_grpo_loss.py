"""GRPO loss: Triton and PyTorch paths against a float64 autograd reference."""

from __future__ import annotations

import zlib
from decimal import Decimal, localcontext

import pytest
import torch

import dsm_engine.kernels  # noqa: F401  (selects Triton's interpreter without CUDA)
from dsm_engine.kernels.grpo_inputs import grpo_token_advantages, grpo_token_weights
from dsm_engine.kernels.grpo_loss import grpo_loss, grpo_loss_ref
from dsm_engine.kernels.grpo_loss_triton import GRPOLossRowsFunction, grpo_loss_rows_op
from dsm_engine.kernels.grpo_metrics import (
    grpo_metric_partials,
    grpo_metrics,
    grpo_metrics_from_partials,
)
from dsm_engine.kernels.grpo_token import grpo_token_terms
from dsm_engine.kernels.options import LOSS_AGGS, GRPOLossOptions

F64 = torch.float64
COUNT_METRICS = ("nonfinite",)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded differently for every test case (reproducible by test id)."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_batch(gen, batch, seq, group, adv_source, *, float_mask=False):
    """Random GRPO inputs in fp64: ratios up to e^{+-3}, a fully masked row when B > 1, one
    group of equal rewards, advantages of both signs."""
    logp = -3.0 * torch.rand(batch, seq, generator=gen, dtype=F64)
    old = logp + (6.0 * torch.rand(batch, seq, generator=gen, dtype=F64) - 3.0)
    ref = logp + 0.5 * torch.randn(batch, seq, generator=gen, dtype=F64)
    mask = torch.rand(batch, seq, generator=gen) > 0.25
    mask[:, 0] = True
    if batch > 1:
        mask[1] = False
    if float_mask:
        mask = mask.to(torch.float32)
    if adv_source == "rewards":
        rewards = torch.randint(0, 3, (batch,), generator=gen).to(F64)
        rewards[:group] = 1.0
        kw = dict(rewards=rewards, group_size=group)
    elif adv_source == "per-seq":
        kw = dict(advantages=torch.randn(batch, generator=gen, dtype=F64))
    else:
        kw = dict(advantages=torch.randn(batch, seq, generator=gen, dtype=F64))
    return logp, old, ref, mask, kw


def cast_kw(kw, dtype):
    return {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}


def reference(logp, old, ref, mask, kw, **opts):
    """fp64 loss, d loss / d logp and metrics of the same (possibly rounded) inputs."""
    x = logp.detach().to(F64).requires_grad_()
    loss, metrics = grpo_loss_ref(x, old.to(F64), ref.to(F64), mask, **cast_kw(kw, F64), **opts)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad, metrics


def run(logp, old, ref, mask, kw, **opts):
    x = logp.detach().clone().requires_grad_()
    loss, metrics = grpo_loss(x, old, ref, mask, **kw, **opts)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad, metrics


def assert_metrics_equal(got, want, rtol=1e-5, atol=1e-6):
    assert set(got) == set(want)
    for name, value in got.items():
        assert value.dtype == torch.float32 and value.dim() == 0, name
        if name in COUNT_METRICS:
            assert value.item() == want[name].item(), name
        else:
            torch.testing.assert_close(value, want[name].float(), rtol=rtol, atol=atol, msg=name)


SHAPES = [(1, 1, 1), (4, 7, 2), (6, 33, 3)]


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("adv_source", ["rewards", "per-seq", "per-token"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-G{}".format(*s))
def test_loss_grad_and_metrics_match_fp64_reference(gen, shape, adv_source, loss_agg, impl):
    batch, seq, group = shape
    logp, old, ref, mask, kw = make_batch(
        gen, batch, seq, group, adv_source, float_mask=loss_agg == "token-mean"
    )
    opts = dict(loss_agg=loss_agg, clip_eps_low=0.2, clip_eps_high=0.28, beta=0.04)
    want_loss, want_grad, want_metrics = reference(logp, old, ref, mask, kw, **opts)
    f32 = torch.float32
    loss, grad, metrics = run(
        logp.to(f32), old.to(f32), ref.to(f32), mask, cast_kw(kw, f32), impl=impl, **opts
    )
    assert loss.dtype == f32 and loss.dim() == 0
    torch.testing.assert_close(loss.to(F64), want_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == f32
    torch.testing.assert_close(grad.to(F64), want_grad, rtol=1e-5, atol=1e-7)
    assert_metrics_equal(metrics, want_metrics)


def test_row_longer_than_one_block_matches_reference(gen):
    """T = 1100 spans two forward blocks: the per-lane accumulators and Welford merge hold."""
    logp, old, ref, mask, kw = make_batch(gen, 4, 1100, 2, "per-token")
    want_loss, want_grad, want_metrics = reference(logp, old, ref, mask, kw)
    loss, grad, metrics = run(
        logp.float(), old.float(), ref.float(), mask, cast_kw(kw, torch.float32), impl="triton"
    )
    torch.testing.assert_close(loss.to(F64), want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.to(F64), want_grad, rtol=1e-5, atol=1e-8)
    assert_metrics_equal(metrics, want_metrics)


def _max_err(a, b):
    return (a.to(F64) - b.to(F64)).abs().max().item()


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_at_most_twice_plain_pytorch(gen, dtype, impl):
    logp, old, ref, mask, kw = make_batch(gen, 6, 33, 3, "rewards")
    lp, od, rf = (t.to(dtype) for t in (logp, old, ref))
    # fp64 truth of the rounded inputs: only arithmetic error is compared.
    want_loss, want_grad, want_metrics = reference(lp, od, rf, mask, kw)
    x = lp.clone().requires_grad_()
    naive_loss, _ = grpo_loss_ref(x, od, rf, mask, **cast_kw(kw, dtype))
    (naive_grad,) = torch.autograd.grad(naive_loss, x)
    loss, grad, metrics = run(lp, od, rf, mask, cast_kw(kw, dtype), impl=impl)
    assert grad.dtype == dtype
    tol = 1e-6
    assert _max_err(loss, want_loss) <= 2 * _max_err(naive_loss, want_loss) + tol
    assert _max_err(grad, want_grad) <= 2 * _max_err(naive_grad, want_grad) + tol
    assert_metrics_equal(metrics, want_metrics)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_beta_zero_and_asymmetric_clip(gen, impl):
    logp, old, ref, mask, kw = make_batch(gen, 4, 7, 2, "per-seq")
    opts = dict(beta=0.0, clip_eps_low=0.1, clip_eps_high=0.5)
    want_loss, want_grad, want_metrics = reference(logp, old, ref, mask, kw, **opts)
    loss, grad, metrics = run(logp, old, ref, mask, kw, impl=impl, **opts)
    torch.testing.assert_close(loss.to(F64), want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.to(F64), want_grad, rtol=1e-5, atol=1e-7)
    assert_metrics_equal(metrics, want_metrics)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_equal_reward_groups_leave_only_the_kl_term(gen, impl):
    logp, old, ref, mask, _ = make_batch(gen, 4, 7, 2, "rewards")
    rewards = torch.full((4,), 0.7, dtype=F64)
    loss, grad, metrics = run(logp, old, ref, mask, dict(rewards=rewards, group_size=2), impl=impl)
    assert metrics["adv_mean"].item() == 0.0 and metrics["adv_std"].item() == 0.0
    assert metrics["clip_frac_low"].item() == 0.0 and metrics["clip_frac_high"].item() == 0.0
    kl_only, kl_grad, _ = reference(
        logp, old, ref, mask, dict(advantages=torch.zeros(4, dtype=F64))
    )
    torch.testing.assert_close(loss.to(F64), kl_only, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.to(F64), kl_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_max_len_sets_the_dr_grpo_constant(gen, impl):
    logp, old, ref, mask, kw = make_batch(gen, 4, 7, 2, "per-seq")
    opts = dict(loss_agg="seq-mean-token-sum-norm")
    base, _, _ = run(logp, old, ref, mask, kw, impl=impl, **opts)
    longer, _, _ = run(logp, old, ref, mask, kw, impl=impl, max_len=28, **opts)
    torch.testing.assert_close(longer, base / 4, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fully_masked_batch_gives_zero_loss_grad_and_metrics(gen, impl):
    logp, old, ref, _, kw = make_batch(gen, 4, 7, 2, "rewards")
    mask = torch.zeros(4, 7, dtype=torch.bool)
    for agg in LOSS_AGGS:
        loss, grad, metrics = run(logp, old, ref, mask, kw, impl=impl, loss_agg=agg)
        assert loss.item() == 0.0 and not grad.any()
        assert all(v.item() == 0.0 for v in metrics.values())


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_nonfinite_loss_terms_are_counted(gen, impl):
    logp, old, ref, mask, kw = make_batch(gen, 4, 7, 2, "per-seq")
    mask[0, :3] = True
    logp[0, 1] = float("nan")
    old[0, 2] = -1e4  # ratio overflows to inf
    _, _, metrics = run(logp, old, ref, mask, kw, impl=impl)
    _, _, want = reference(logp, old, ref, mask, kw)
    assert metrics["nonfinite"].item() == want["nonfinite"].item() >= 1


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_gradient_flows_only_into_logp(gen, impl):
    logp, old, ref, mask, kw = make_batch(gen, 4, 7, 2, "per-seq")
    x = logp.clone().requires_grad_()
    old.requires_grad_()
    ref.requires_grad_()
    adv = kw["advantages"].requires_grad_()
    loss, _ = grpo_loss(x, old, ref, mask, advantages=adv, impl=impl)
    loss.backward()
    assert x.grad is not None and old.grad is None and ref.grad is None and adv.grad is None


def test_rows_with_a_row_stride_are_read_in_place(gen):
    logp, old, ref, mask, kw = make_batch(gen, 4, 16, 2, "per-token")
    wide = torch.zeros(4, 40, dtype=F64)
    wide[:, 3:19] = logp
    view = wide[:, 3:19]
    assert not view.is_contiguous()
    want_loss, want_grad, _ = reference(logp, old, ref, mask, kw)
    loss, grad, _ = run(view, old, ref, mask, kw, impl="triton")
    torch.testing.assert_close(loss.to(F64), want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.to(F64), want_grad, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------
# Shared helpers used by the fused path
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_token_weights_times_terms_equal_the_reference_loss(gen, loss_agg):
    logp, old, ref, mask, kw = make_batch(gen, 6, 9, 3, "rewards")
    want_loss, want_grad, want_metrics = reference(logp, old, ref, mask, kw, loss_agg=loss_agg)
    adv = grpo_token_advantages(mask, **kw)
    options = GRPOLossOptions(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.04)
    terms, _, _, dterms = grpo_token_terms(logp, old, ref, adv, options, with_grad=True)
    weights = grpo_token_weights(mask, loss_agg, dtype=F64)
    assert grpo_token_weights(mask, loss_agg).dtype == torch.float32
    torch.testing.assert_close((weights * terms).sum(), want_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(weights * dterms, want_grad, rtol=1e-12, atol=1e-14)


def test_metric_partials_of_chunks_combine_to_the_whole(gen):
    shape = (5, 23)
    valid = torch.rand(shape, generator=gen) > 0.3
    ratio = torch.rand(shape, generator=gen, dtype=F64) * 3
    adv = torch.randn(shape, generator=gen, dtype=F64) + 4.0
    kl = torch.rand(shape, generator=gen, dtype=F64)
    terms = torch.randn(shape, generator=gen, dtype=F64)
    opts = dict(clip_eps_low=0.2, clip_eps_high=0.2)
    whole = grpo_metrics(valid, ratio, adv, kl, terms, **opts)
    cuts = [0, 4, 5, 17, 23]  # includes an empty chunk
    rows = [
        grpo_metric_partials(*(t[:, a:b] for t in (valid, ratio, adv, kl, terms)), **opts)
        for a, b in zip(cuts[:-1], cuts[1:])
    ]
    assert_metrics_equal(grpo_metrics_from_partials(torch.stack(rows)), whole, rtol=1e-6)
    v = valid
    torch.testing.assert_close(whole["adv_std"], adv[v].std(correction=0).float())
    torch.testing.assert_close(whole["ratio_max"], ratio[v].max().float())


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------

B, T = 4, 5


def _good():
    z = torch.zeros(B, T)
    return dict(
        logp=z.clone(),
        old_logp=z.clone(),
        ref_logp=z.clone(),
        mask=torch.ones(B, T, dtype=torch.bool),
        rewards=torch.zeros(B),
        group_size=2,
    )


def _call(impl, **changes):
    kw = _good() | changes
    kw = {k: v for k, v in kw.items() if v is not None}
    args = [kw.pop(k) for k in ("logp", "old_logp", "ref_logp", "mask")]
    return grpo_loss(*args, impl=impl, **kw)


BAD = [
    ("old_logp", dict(old_logp=torch.zeros(B, T + 1))),
    ("ref_logp", dict(ref_logp=torch.zeros(B + 1, T))),
    ("mask", dict(mask=torch.ones(B, T - 1, dtype=torch.bool))),
    ("logp", dict(logp=torch.zeros(B * T))),
    ("ref_logp", dict(ref_logp=torch.zeros(B, T, device="meta"))),
    ("old_logp", dict(old_logp=torch.zeros(B, T, dtype=torch.int64))),
    ("group_size", dict(group_size=3)),
    ("group_size", dict(group_size=0)),
    ("group_size", dict(group_size=None)),
    ("loss_agg", dict(loss_agg="sequence-mean")),
    ("exactly one of advantages and rewards", dict(advantages=torch.zeros(B))),
    ("exactly one of advantages and rewards", dict(rewards=None)),
    ("advantages", dict(rewards=None, group_size=None, advantages=torch.zeros(B, T + 2))),
    ("group_size", dict(rewards=None, advantages=torch.zeros(B))),
    ("rewards", dict(rewards=torch.zeros(B, 1))),
    ("max_len", dict(max_len=0)),
    ("clip_eps_low", dict(clip_eps_low=-0.1)),
    ("impl", dict()),
]


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("name,changes", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_the_argument(name, changes, impl):
    if name == "impl":
        impl = "cuda-please"
    with pytest.raises(ValueError, match=name):
        _call(impl, **changes)


# ------------------------------------------------------------------------------------------
# torch.library registration
# ------------------------------------------------------------------------------------------


def _op_args(gen, adv_source):
    logp, old, ref, mask, kw = make_batch(gen, 4, 5, 2, adv_source)
    f = torch.float32
    mode, adv = (2, kw["rewards"]) if adv_source == "rewards" else (0, kw["advantages"])
    if adv_source == "per-token":
        mode = 1
    g = kw.get("group_size", 1)
    return (logp.to(f).requires_grad_(), old.to(f), ref.to(f), mask, adv.to(f), mode, g)


@pytest.mark.parametrize("adv_source", ["rewards", "per-token"])
def test_library_op_passes_opcheck(gen, adv_source):
    # coeffs: (adv_eps, clip_eps_low, clip_eps_high, beta)
    args = _op_args(gen, adv_source) + ([1e-6, 0.2, 0.25, 0.04],)
    torch.library.opcheck(grpo_loss_rows_op, args)


def test_autograd_function_equals_the_registered_op(gen):
    args = _op_args(gen, "per-seq") + ([1e-6, 0.2, 0.2, 0.04],)
    a = GRPOLossRowsFunction.apply(*args)[0].sum()
    b = grpo_loss_rows_op(*args)[0].sum()
    (ga,) = torch.autograd.grad(a, args[0])
    (gb,) = torch.autograd.grad(b, args[0])
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_torch_compile_traces_the_triton_path(gen):
    logp, old, ref, mask, kw = make_batch(gen, 4, 7, 2, "rewards")
    logp, old, ref = logp.float(), old.float(), ref.float()
    kw = cast_kw(kw, torch.float32)

    def step(x):
        loss, metrics = grpo_loss(x, old, ref, mask, **kw, impl="triton")
        return loss, metrics["kl_mean"]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x1, x2 = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    (l1, k1), (l2, k2) = compiled(x1), step(x2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(k1, k2)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("adv_source", ["rewards", "per-token"])
def test_gpu_deepseekmath_shape_matches_fp64_and_beats_plain_bf16(gen, adv_source):
    """64 samples (G=16) of 1024 tokens in bf16 on CUDA, the default impl."""
    cuda = torch.device("cuda")
    logp, old, ref, mask, kw = make_batch(gen, 64, 1024, 16, adv_source)
    lp, od, rf = (t.to(cuda, torch.bfloat16) for t in (logp, old, ref))
    mask = mask.to(cuda)
    kw = {k: (v.to(cuda) if torch.is_tensor(v) else v) for k, v in kw.items()}
    want_loss, want_grad, want_metrics = reference(lp, od, rf, mask, kw)
    x = lp.clone().requires_grad_()
    naive_loss, _ = grpo_loss_ref(x, od, rf, mask, **cast_kw(kw, torch.bfloat16))
    (naive_grad,) = torch.autograd.grad(naive_loss, x)
    loss, grad, metrics = run(lp, od, rf, mask, cast_kw(kw, torch.bfloat16), impl="auto")
    assert _max_err(loss, want_loss) <= 2 * _max_err(naive_loss, want_loss) + 1e-6
    assert _max_err(grad, want_grad) <= 2 * _max_err(naive_grad, want_grad) + 1e-6
    assert_metrics_equal(metrics, want_metrics, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# One per-token formula
# ------------------------------------------------------------------------------------------


def _exact_token_loss(logp, old, ref, adv, lo, hi, beta):
    """The per-token loss in 40-digit decimal arithmetic (an independent reference)."""
    with localcontext() as ctx:
        ctx.prec = 40
        lp, od, rf, a = (Decimal(float(x)) for x in (logp, old, ref, adv))
        r = (lp - od).exp()
        clipped = min(max(r, 1 - Decimal(lo)), 1 + Decimal(hi)) * a
        d = rf - lp
        return float(-min(r * a, clipped) + Decimal(beta) * (d.exp() - d - 1))


def test_token_formula_in_fp64_matches_exact_arithmetic(gen):
    logp, old, ref, _, _ = make_batch(gen, 4, 9, 2, "per-token")
    ref[0] = logp[0] + 1e-6 * torch.randn(9, generator=gen, dtype=F64)  # k3 ~ d^2/2 ~ 1e-12
    adv = torch.randn(4, 9, generator=gen, dtype=F64)
    options = GRPOLossOptions(clip_eps_low=0.2, clip_eps_high=0.28, beta=0.04)
    terms = grpo_token_terms(logp, old, ref, adv, options)
    rows = zip(*(t.flatten().tolist() for t in (logp, old, ref, adv)), strict=True)
    exact = torch.tensor([_exact_token_loss(*row, 0.2, 0.28, 0.04) for row in rows], dtype=F64)
    torch.testing.assert_close(terms.loss.flatten(), exact, rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_kl_term_is_accurate_when_ref_is_close_to_logp(gen, impl):
    """With zero advantages the loss is beta * mean k3; at |ref - logp| ~ 1e-3 every path keeps
    fp32 relative accuracy against fp64 (exp(d) - d - 1 in fp32 is off by tens of percent)."""
    logp, old, _, mask, _ = make_batch(gen, 4, 33, 2, "per-seq")
    ref = logp + 1e-3 * torch.randn(4, 33, generator=gen, dtype=F64)
    x, od, rf = (t.float().double() for t in (logp, old, ref))  # exact fp32 inputs
    kw = dict(advantages=torch.zeros(4, dtype=F64))
    want_loss, want_grad, want_metrics = reference(x, od, rf, mask, kw)
    loss, grad, metrics = run(
        x.float(), od.float(), rf.float(), mask, cast_kw(kw, torch.float32), impl=impl
    )
    torch.testing.assert_close(loss.to(F64), want_loss, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(
        metrics["kl_mean"].to(F64), want_metrics["kl_mean"].to(F64), rtol=1e-5, atol=0.0
    )
    torch.testing.assert_close(grad.to(F64), want_grad, rtol=1e-5, atol=1e-12)
