"""logprobs_from_logits: Triton (interpreted on CPU) against a float64 reference."""

from __future__ import annotations

import pytest
import torch
from _kernel_checks import assert_close_to_ref, seeded

from dsm_engine.kernels import _logsoftmax, logprobs_from_logits, logprobs_from_logits_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (N, V, row padding making the row stride != V, temperature, entropy)
CASES = {
    "N=1": (1, 37, 0, 1.0, False),
    "V-not-block-multiple": (9, 1000, 0, 1.0, True),
    "strided-rows": (6, 300, 23, 1.0, False),
    "temperature": (5, 257, 5, 0.7, True),
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # A 128-wide block makes every case above loop over several blocks with a ragged tail.
    monkeypatch.setattr(_logsoftmax, "MAX_BLOCK_V", 128)


def _logits(n, v, pad, dtype, gen):
    full = torch.randn(n, v + pad, generator=gen) * 4
    return full.to(dtype)[:, :v]  # stride(0) == v + pad


def _plain_torch(logits, targets, temperature, entropy):
    """What a user gets from PyTorch at the logits' own dtype (the low-precision baseline)."""
    lp_all = torch.log_softmax(logits / temperature, dim=-1)
    lp = lp_all.gather(1, targets[:, None]).squeeze(1)
    return (lp, -(lp_all.exp() * lp_all).sum(-1)) if entropy else (lp, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_and_grad_match_fp64_reference(case, dtype):
    n, v, pad, temp, entropy = case
    gen = seeded(case, dtype)
    logits = _logits(n, v, pad, dtype, gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    g_lp = torch.randn(n, generator=gen)
    g_ent = torch.randn(n, generator=gen)

    x = logits.detach().requires_grad_()
    out = logprobs_from_logits(x, targets, temperature=temp, return_entropy=entropy, impl="triton")
    lp, ent = out if entropy else (out, None)
    assert lp.dtype == torch.float32 and lp.shape == (n,)
    loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if entropy else 0)
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.dtype == dtype

    xr = logits.detach().double().requires_grad_()
    ref = logprobs_from_logits_ref(xr, targets, temperature=temp, return_entropy=entropy)
    lp_r, ent_r = ref if entropy else (ref, None)
    loss_r = (lp_r * g_lp.double()).sum() + ((ent_r * g_ent.double()).sum() if entropy else 0)
    (grad_r,) = torch.autograd.grad(loss_r, xr)

    xb = logits.detach().requires_grad_()
    lp_b, ent_b = _plain_torch(xb, targets, temp, entropy)
    loss_b = (lp_b * g_lp.to(dtype)).sum() + ((ent_b * g_ent.to(dtype)).sum() if entropy else 0)
    (grad_b,) = torch.autograd.grad(loss_b, xb)

    assert_close_to_ref("logp", lp, lp_r, lp_b, dtype)
    if entropy:
        assert_close_to_ref("entropy", ent, ent_r, ent_b, dtype)
    assert_close_to_ref("grad_logits", grad, grad_r, grad_b, dtype)


def test_inplace_backward_writes_the_gradient_into_the_logits_buffer():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 200, generator=gen, requires_grad=True)
    targets = torch.randint(0, 200, (4,), generator=gen)
    logits = base * 1.0  # a non-leaf buffer nobody else needs
    lp = logprobs_from_logits(logits, targets, inplace_backward=True, impl="triton")
    lp.sum().backward()
    expected = torch.softmax(base.detach(), -1).neg()
    expected[torch.arange(4), targets] += 1
    torch.testing.assert_close(base.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-6)


def test_auto_on_cpu_matches_triton():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 50, generator=gen)
    targets = torch.randint(0, 50, (3,), generator=gen)
    a = logprobs_from_logits(logits, targets, impl="auto")
    b = logprobs_from_logits(logits, targets, impl="triton")
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"targets": torch.tensor([0, 10])}, r"targets must lie in \[0, 10\)"),
        ({"targets": torch.tensor([0, -1])}, "targets must lie"),
        ({"targets": torch.tensor([0, 1, 2])}, "targets must have shape"),
        ({"targets": torch.tensor([0.0, 1.0])}, "targets must hold integer"),
        ({"logits": torch.zeros(2, 3, 10)}, "logits must be 2-D"),
        ({"logits": torch.zeros(2, 10, dtype=torch.int32)}, "logits must have dtype"),
        ({"logits": torch.zeros(2, 10, device="meta")}, "targets is on cpu but logits"),
        ({"temperature": 0.0}, "temperature"),
        ({"impl": "cuda"}, "impl must be one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = {"logits": torch.zeros(2, 10), "targets": torch.tensor([0, 9])}
    args.update(kwargs)
    opts = {k: args.pop(k) for k in ("temperature", "impl") if k in args}
    opts.setdefault("impl", "triton")
    with pytest.raises(ValueError, match=match):
        logprobs_from_logits(args["logits"], args["targets"], **opts)


def test_registered_ops_pass_opcheck():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 40, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (3,), generator=gen)
    torch.library.opcheck(torch.ops.dsm_engine.logprobs.default, (logits, targets, 1.25, False))
    lse, tgt, px = torch.ops.dsm_engine.logsoftmax_stats(logits.detach(), targets, 0, 1.0)
    shift = torch.randn(3, generator=gen)
    torch.library.opcheck(
        torch.ops.dsm_engine.logsoftmax_stats.default, (logits.detach(), targets, 5, 0.5, shift)
    )
    g = torch.randn(3, generator=gen)
    torch.library.opcheck(
        torch.ops.dsm_engine.logsoftmax_grad.default,
        (logits.detach(), targets, lse, px, g, g, None, 0, 1.0),
    )


def test_torch_compile_traces_the_triton_op():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 70, generator=gen, requires_grad=True)
    targets = torch.randint(0, 70, (5,), generator=gen)

    def f(x, t):
        lp, ent, _ = torch.ops.dsm_engine.logprobs(x, t, 1.0, False)
        return (lp + 0.1 * ent).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (g_c,) = torch.autograd.grad(compiled(logits, targets), logits)
    (g_e,) = torch.autograd.grad(f(logits, targets), logits)
    torch.testing.assert_close(g_c, g_e)


@pytest.mark.gpu
def test_deepseekmath_head_shape_on_gpu():
    n, v = 2048, 102400
    gen = torch.Generator(device="cuda").manual_seed(5)
    logits = (torch.randn(n, v, device="cuda", generator=gen) * 4).bfloat16()
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    x = logits.clone().requires_grad_()
    lp, ent = logprobs_from_logits(x, targets, return_entropy=True)
    (grad,) = torch.autograd.grad(lp.sum() + ent.sum(), x)
    xr = logits.double().requires_grad_()
    lp_r, ent_r = logprobs_from_logits_ref(xr, targets, return_entropy=True)
    (grad_r,) = torch.autograd.grad(lp_r.sum() + ent_r.sum(), xr)
    xb = logits.clone().requires_grad_()
    lp_b, ent_b = _plain_torch(xb, targets, 1.0, True)
    (grad_b,) = torch.autograd.grad(lp_b.sum() + ent_b.sum(), xb)
    assert_close_to_ref("logp", lp, lp_r, lp_b, torch.bfloat16)
    assert_close_to_ref("entropy", ent, ent_r, ent_b, torch.bfloat16)
    assert_close_to_ref("grad_logits", grad, grad_r, grad_b, torch.bfloat16)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_stats_with_a_shift_report_lse_and_px_of_the_shifted_logits(impl):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 300, generator=gen, dtype=torch.float64) * 8
    targets = torch.tensor([0, 299, 150, 7])
    shift = torch.randn(4, generator=gen, dtype=torch.float64) * 20
    stats = _logsoftmax.stats_triton if impl == "triton" else _logsoftmax.stats_torch
    lse, tgt, px = stats(logits.float(), targets, 0, 0.7, shift.float())
    z = logits * 0.7
    want_lse = torch.logsumexp(z, -1) - shift
    want_px = (torch.softmax(z, -1) * z).sum(-1) - shift
    want_tgt = z.gather(1, targets[:, None]).squeeze(1)  # the target logit is not shifted
    for got, want in ((lse, want_lse), (px, want_px), (tgt, want_tgt)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_a_temperature_scales_low_precision_logits_after_upcasting_them(dtype, impl):
    """The chunk primitives take the lm_head's bf16/fp16 logits as stored: ``lse``, ``px``,
    the target logit and the logits' gradient at a temperature are fp64 math on those logits up
    to fp32 rounding. (The PyTorch twins once scaled before upcasting, and
    ``torch.mul(bf16, t, out=fp32)`` rounds each logit/T to bf16: errors of ~1e-2.)"""
    n, v, temp = 6, 300, 0.7
    gen = seeded("temperature-upcast", dtype, impl)
    logits = (torch.randn(n, v, generator=gen) * 8).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    g_lp = torch.randn(n, generator=gen)
    stats, grad = (
        (_logsoftmax.stats_triton, _logsoftmax.grad_triton)
        if impl == "triton"
        else (_logsoftmax.stats_torch, _logsoftmax.grad_torch)
    )
    lse, tgt, px = stats(logits, targets, 0, 1 / temp)
    g = grad(logits, targets, lse, px, g_lp, None, 0, 1 / temp, torch.empty(n, v))

    z = logits.double() / temp
    p = torch.softmax(z, -1)
    want_g = -g_lp.double()[:, None] * p / temp
    want_g[torch.arange(n), targets] += g_lp.double() / temp
    wants = (
        ("lse", lse, torch.logsumexp(z, -1)),
        ("px", px, (p * z).sum(-1)),
        ("target logit", tgt, z.gather(1, targets[:, None]).squeeze(1)),
        ("grad", g, want_g),
    )
    for name, got, want in wants:
        err = (got.double() - want).abs().max().item()
        assert err <= 1e-5 * max(1.0, want.abs().max().item()), f"{name}: error {err:.3g}"
