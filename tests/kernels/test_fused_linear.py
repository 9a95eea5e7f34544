"""fused_linear_logprobs and fused_linear_grpo_loss against materialised float64 references."""

from __future__ import annotations

import pytest
import torch
from _kernel_checks import TOL, assert_close_to_ref, exact_on_rounded_logits, max_err, seeded

from dsm_engine.kernels import (
    _logsoftmax,
    default_chunk_sizes,
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


def _head(n, h, v, dtype, gen):
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * (3 / h**0.5)).to(dtype)
    return hidden, weight


def _materialised_at_dtype(hidden, weight, targets, temperature, entropy):
    """Plain PyTorch at the inputs' dtype (the low-precision baseline)."""
    lp_all = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)
    lp = lp_all.gather(1, targets[:, None]).squeeze(1)
    return lp, (-(lp_all.exp() * lp_all).sum(-1) if entropy else None)


# (N, H, V, token_chunk, vocab_chunk, temperature, entropy); vocab_chunk None = full vocab.
LOGPROB_CASES = {
    "N=1": (1, 16, 37, None, None, 1.0, False),
    "ragged-chunks-V-not-block-multiple": (13, 24, 300, 4, None, 1.0, True),
    "temperature": (8, 16, 200, 3, None, 0.6, True),
    "vocab-chunks-ragged-last-chunk": (13, 24, 300, 4, 64, 1.0, True),
    "vocab-chunks-N=1": (1, 16, 37, None, 16, 1.0, True),
    "vocab-chunks-temperature": (8, 16, 200, 3, 48, 0.6, True),
}


def _targets(n, v, gen):
    """Random ids, with the first token's id in the last (partial) vocabulary chunk."""
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[0] = v - 1
    return targets


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LOGPROB_CASES.values(), ids=LOGPROB_CASES.keys())
def test_fused_linear_logprobs_matches_fp64_reference(case, dtype, impl):
    n, h, v, token_chunk, vocab_chunk, temp, entropy = case
    gen = seeded(case, dtype, impl)
    hidden, weight = _head(n, h, v, dtype, gen)
    targets = _targets(n, v, gen)
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)

    def run(fn, hd, wt, gl, ge):
        hd, wt = hd.detach().requires_grad_(), wt.detach().requires_grad_()
        lp, ent = fn(hd, wt)
        loss = (lp * gl).sum() + ((ent * ge).sum() if entropy else 0)
        return (lp, ent, *torch.autograd.grad(loss, (hd, wt)))

    out = run(
        lambda a, b: fused_linear_logprobs(
            a,
            b,
            targets,
            temperature=temp,
            return_entropy=True,
            token_chunk=token_chunk,
            vocab_chunk=vocab_chunk,
            impl=impl,
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
    inherent = run(
        lambda a, b: exact_on_rounded_logits(a, b, targets, temp),
        hidden,
        weight,
        g_lp.double(),
        g_ent.double(),
    )
    assert out[0].dtype == torch.float32 and out[0].shape == (n,)
    for i, name in enumerate(["logp", "entropy", "grad_hidden", "grad_weight"]):
        if name == "entropy" and not entropy:
            continue
        assert_close_to_ref(name, out[i], ref[i], base[i], dtype, inherent=inherent[i])


def _grpo_inputs(b, t, h, v, dtype, gen, *, far_ratios=True):
    hidden, weight = _head(b * t, h, v, dtype, gen)
    targets = _targets(b * t, v, gen)
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


# (token_chunk, vocab_chunk): full-vocabulary token chunks, and vocabulary chunks (200 = 3x64+8).
# "default": the op's own chunk sizes; for the PyTorch primitives in fp32 on the CPU that is
# the one-pass path (token rows over the whole vocabulary, gradients from the logits in place).
CHUNKINGS = {"token-chunks": (7, None), "vocab-chunks": (7, 64), "default": (None, None)}


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("spec", GRPO_CASES.values(), ids=GRPO_CASES.keys())
def test_fused_linear_grpo_loss_matches_materialised_reference(spec, chunks, dtype, impl):
    b, t, h, v = 6, 5, 16, 200
    gen = seeded(spec, chunks, dtype, impl)
    hidden, weight, targets, old, ref, mask = _grpo_inputs(b, t, h, v, dtype, gen)
    kw = _grpo_kwargs(spec, b, t, gen)
    temp = kw.get("temperature", 1.0)

    hd, wt = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    token_chunk, vocab_chunk = chunks
    loss, metrics = fused_linear_grpo_loss(
        hd,
        wt,
        targets,
        old,
        ref,
        mask,
        token_chunk=token_chunk,
        vocab_chunk=vocab_chunk,
        impl=impl,
        **kw,
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
    hi, wi = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    logp_i, _ = exact_on_rounded_logits(hi.reshape(b * t, h), wi, targets.reshape(-1), temp)
    kw64 = _with_dtype(grpo_kw, torch.float64)
    loss_i, _ = grpo_loss_ref(logp_i.reshape(b, t), old.double(), ref.double(), mask, **kw64)
    loss_i.backward()
    assert_close_to_ref("grad_hidden", hd.grad, hr.grad, hb.grad, dtype, inherent=hi.grad)
    assert_close_to_ref("grad_weight", wt.grad, wr.grad, wb.grad, dtype, inherent=wi.grad)
    assert set(metrics) == set(metrics_r)
    if dtype == torch.float32:
        for k in metrics:
            torch.testing.assert_close(metrics[k], metrics_r[k].float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", GRPO_CASES.values(), ids=GRPO_CASES.keys())
def test_fused_grpo_loss_equals_grpo_loss_of_logprobs_from_logits(spec):
    b, t, h, v = 4, 6, 16, 150
    gen = seeded("compose", spec)
    hidden, weight, targets, old, ref, mask = _grpo_inputs(b, t, h, v, torch.float32, gen)
    kw = _grpo_kwargs(
        {**spec, "rewards": [1.0, 0.0, 0.5, 0.5]} if "rewards" in spec else spec, b, t, gen
    )
    if "group_size" in kw:
        kw["group_size"] = 2
    temp = kw.pop("temperature", 1.0)
    hd, wt = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss, metrics = fused_linear_grpo_loss(
        hd,
        wt,
        targets,
        old,
        ref,
        mask,
        temperature=temp,
        token_chunk=5,
        vocab_chunk=64,
        impl="triton",
        **kw,
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
    # Vocabulary chunks sum each gradient in another order: fp32 rounding relative to its scale.
    for got, want in ((hd.grad, h2.grad), (wt.grad, w2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_fused_grpo_loss_without_grad_matches_with_grad():
    gen = seeded("nograd")
    hidden, weight, targets, old, ref, mask = _grpo_inputs(4, 6, 16, 100, torch.float32, gen)
    kw = {"rewards": torch.tensor([1.0, 0.0, 0.0, 1.0]), "group_size": 2}
    with torch.no_grad():
        a, ma = fused_linear_grpo_loss(hidden, weight, targets, old, ref, mask, impl="triton", **kw)
    w = weight.detach().requires_grad_()
    b, mb = fused_linear_grpo_loss(hidden, w, targets, old, ref, mask, impl="triton", **kw)
    torch.testing.assert_close(a, b.detach())
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k])


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_masked_tokens_never_reach_the_head(impl):
    """With token chunks of at most an eighth of the tokens, prompt and padding positions run
    no lm_head: non-finite hidden states there change neither the loss nor the gradients,
    and their rows get an exact zero gradient."""
    b, t, h, v = 4, 6, 16, 120
    gen = seeded("masked-rows", impl)
    hidden, weight, targets, old, ref, mask = _grpo_inputs(b, t, h, v, torch.float32, gen)
    kw = {"advantages": torch.randn(b, generator=gen), "impl": impl, "token_chunk": 3}
    poisoned = hidden.clone()
    poisoned[~mask] = torch.tensor([float("nan"), float("inf")]).repeat(h // 2)
    results = []
    for x in (hidden, poisoned):
        hd, wt = x.detach().requires_grad_(), weight.detach().requires_grad_()
        loss, metrics = fused_linear_grpo_loss(hd, wt, targets, old, ref, mask, **kw)
        loss.backward()
        results.append((loss, metrics, hd.grad, wt.grad))
    (loss, metrics, gh, gw), (loss_p, metrics_p, gh_p, gw_p) = results
    assert torch.isfinite(loss_p) and torch.isfinite(gw_p).all() and torch.isfinite(gh_p).all()
    assert torch.equal(gh_p[~mask], torch.zeros_like(gh_p[~mask]))
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(gh_p, gh)
    torch.testing.assert_close(gw_p, gw)
    for k in metrics:
        torch.testing.assert_close(metrics_p[k], metrics[k])


def test_backward_scales_by_the_incoming_gradient():
    gen = seeded("scale")
    hidden, weight, targets, old, ref, mask = _grpo_inputs(2, 4, 8, 50, torch.float32, gen)
    kw = {"advantages": torch.tensor([0.5, -1.0]), "impl": "triton", "token_chunk": 3}
    grads = []
    for scale in (1.0, -2.5):
        w = weight.detach().requires_grad_()
        loss, _ = fused_linear_grpo_loss(hidden, w, targets, old, ref, mask, **kw)
        (loss * scale).backward()
        grads.append(w.grad / scale)
    torch.testing.assert_close(grads[0], grads[1])


def test_default_chunk_sizes_keep_full_vocab_token_chunks_when_they_fit_the_budget():
    n, h, v = 8192, 4096, 102400  # DeepSeekMath-7B's head: the 6NHV path
    tc, vc = default_chunk_sizes(n, h, v)
    assert (tc, vc) == (256, v) and tc * v <= n * h
    assert default_chunk_sizes(4096, 4096, v) == (128, v)
    assert default_chunk_sizes(5, 8, 1000) == (5, 1000)  # never more rows than there are
    assert default_chunk_sizes(4096, 16, 1000, budget=4 * 4096 * 16) == (256, 1000)


def test_default_chunk_sizes_chunk_the_vocab_when_an_efficient_token_chunk_is_too_big():
    tc, vc = default_chunk_sizes(1024, 4096, 256000)  # 128 rows x 256,000 > 2**24
    assert (tc, vc) == (128, 131072) and tc * vc <= 2**24
    tc, vc = default_chunk_sizes(512, 8, 1000, budget=64 * 1000)
    assert tc == 128 and vc == 384 and tc * vc <= 64 * 1000
    # A budget below one aligned block shrinks the token chunk instead.
    assert default_chunk_sizes(512, 8, 1000, budget=4096) == (32, 128)


def test_cpu_chunk_rule_bounds_a_chunk_to_a_64th_of_the_logits():
    from dsm_engine.kernels._head_chunks import CPU_VOCAB_CHUNKS, cpu_chunk_sizes

    assert CPU_VOCAB_CHUNKS == 64
    for n, v in [(512, 32000), (2048, 32000), (2048, 102400), (1, 65536)]:
        tc, vc = cpu_chunk_sizes(n, v)
        # One token chunk (so bf16 "auto" rounds each weight row once, no fp32 buffer) and a
        # chunk of logits at most N·ceil(V/64): 3/64 of the fp32 logits with the temporaries.
        assert tc == n and vc == -(-v // 64) and tc * vc <= n * v / 64 + n
    # Small vocabularies keep slices of at least 128 columns (or the whole shard).
    assert cpu_chunk_sizes(96, 500) == (96, 128)
    assert cpu_chunk_sizes(4, 100) == (4, 100)


def test_cpu_rule_with_fp32_row_temporaries_bounds_rows_by_the_block_too():
    from dsm_engine.kernels._head_chunks import cpu_chunk_sizes

    for n, h, v in [(512, 1024, 32000), (2048, 4096, 32000), (512, 4096, 102400)]:
        budget = -(-n * v // 64)
        tc, vc = cpu_chunk_sizes(n, v, row_width=h)
        # Equal row blocks whose fp32 (rows, H) copies and logits block each fit the budget.
        assert tc < n and tc * h <= budget and tc * vc <= budget and vc % 128 == 0
        assert -(-n // tc) * tc - n < -(-n // tc)
    assert cpu_chunk_sizes(512, 32000, row_width=256) == (512, 500)  # H small: no row blocks


def test_cpu_rule_applies_to_the_torch_primitives_on_cpu_unless_chunks_are_given():
    from dsm_engine.kernels._head_chunks import resolve_chunk_sizes

    assert resolve_chunk_sizes(512, 1024, 32000, None, None, cpu=True) == (512, 500)
    assert resolve_chunk_sizes(512, 1024, 32000, None, None) == (512, 32000)  # the GPU rule
    assert resolve_chunk_sizes(512, 1024, 32000, 128, None, cpu=True) == (128, 32000)


def test_the_grpo_op_takes_the_one_pass_path_in_fp32_on_cpu_from_2048_tokens():
    """Its gradients in forward, fp32 on the CPU: chunks of N/16 rows over the whole vocabulary
    (one fp32 buffer of ~6.25% of the logits) from 128 rows per chunk; below, the CPU rule."""
    from dsm_engine.kernels._head import resolve_head
    from dsm_engine.kernels._head_chunks import cpu_one_pass_rows
    from dsm_engine.kernels.options import HeadOptions

    assert cpu_one_pass_rows(2048) == 128 and cpu_one_pass_rows(4000) == 250
    assert cpu_one_pass_rows(2032) is None

    def plan(n, dtype=torch.float32, one_pass=True, **chunks):
        hidden = torch.zeros(1, n, 8, dtype=dtype)
        weight = torch.zeros(1000, 8, dtype=dtype)
        targets = torch.zeros(1, n, dtype=torch.long)
        head = resolve_head(
            hidden,
            weight,
            targets,
            HeadOptions(**chunks),
            hidden_dims=3,
            tp_group=None,
            impl="torch",
            one_pass=one_pass,
        )
        return head.one_pass, head.token_chunk, head.vocab_chunk

    assert plan(4096) == (True, 256, 1000)
    assert plan(1024) == (False, 1024, 128)  # the CPU rule's vocabulary slices
    assert plan(4096, one_pass=False) == (False, 4096, 128)  # no gradients in forward
    assert plan(4096, torch.bfloat16)[0] is False  # low precision keeps the CPU rule
    assert plan(64, token_chunk=8) == (True, 8, 1000)  # full-vocabulary chunks, as given
    assert plan(64, token_chunk=8, vocab_chunk=100) == (False, 8, 100)


def test_explicit_chunk_sizes_fill_the_missing_one_from_the_budget():
    from dsm_engine.kernels._head_chunks import resolve_chunk_sizes

    assert resolve_chunk_sizes(100, 8, 500, 16, None) == (16, 500)
    assert resolve_chunk_sizes(100, 8, 500, None, 64) == (100, 64)
    assert resolve_chunk_sizes(100, 8, 500, 7, 9999) == (7, 500)
    tc, vc = resolve_chunk_sizes(4096, 4096, 256000, 1024, None)
    assert tc == 1024 and tc * vc <= 4096 * 4096 and vc % 128 == 0


def test_vocab_chunked_grpo_loss_of_one_token_equals_full_vocab():
    gen = seeded("one-token")
    hidden, weight, targets, old, ref, _ = _grpo_inputs(1, 1, 8, 70, torch.float32, gen)
    mask = torch.ones(1, 1, dtype=torch.bool)
    outs = []
    for vocab_chunk in (None, 32):
        hd, wt = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        loss, _ = fused_linear_grpo_loss(
            hd,
            wt,
            targets,
            old,
            ref,
            mask,
            advantages=torch.tensor([1.5]),
            vocab_chunk=vocab_chunk,
            impl="triton",
        )
        outs.append((loss, *torch.autograd.grad(loss, (hd, wt))))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


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
        ({"token_chunk": 0}, "token_chunk must be a positive int"),
        ({"vocab_chunk": 2.5}, "vocab_chunk must be a positive int"),
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
@pytest.mark.parametrize("vocab_chunk", [None, 16384], ids=["default-chunks", "vocab-chunks"])
def test_deepseekmath_head_shape_on_gpu(vocab_chunk):
    # N = 8,192 tokens: 32 token chunks of 256 rows by default, so grad_weight's accumulation
    # matters; "auto" (the default) accumulates it in fp32 for this bf16 head.
    b, t, h, v = 8, 1024, 4096, 102400
    gen = torch.Generator(device="cuda").manualseeded(7)
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
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0], device="cuda")
    kw = {"rewards": rewards, "group_size": 2}

    hd, wt = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = fused_linear_grpo_loss(
        hd, wt, targets, old, ref, mask, vocab_chunk=vocab_chunk, grad_weight_accum="auto", **kw
    )
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
