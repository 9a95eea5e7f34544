"""Shared assertions for the kernel tests: error against fp64, bounded by plain PyTorch's."""

from __future__ import annotations

import torch

from dsm_engine.kernels import logprobs_from_logits_ref

LOW_PRECISION = (torch.bfloat16, torch.float16)
# Slack added to the 2x bound, relative to the largest reference value: one unit in the last
# place of the dtype (a result stored in bf16 is off by up to half of that however it is
# computed, so a lucky baseline must not make an exactly rounded kernel fail).
TOL = {torch.float32: 2e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref.double()).abs().max().item() if x.numel() else 0.0


def low_precision_bound(
    ref: torch.Tensor,
    baseline: torch.Tensor,
    dtype: torch.dtype,
    *,
    inherent: torch.Tensor | None = None,
) -> float:
    """The most error ``assert_close_to_ref`` allows a ``dtype`` (bf16/fp16) result: twice
    the larger of plain PyTorch's and the inherent error, plus ``TOL`` of the largest value."""
    scale = max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
    base = max_err(baseline, ref)
    if inherent is not None:
        base = max(base, max_err(inherent, ref))
    return 2 * base + TOL[dtype] * scale


class _RoundTo(torch.autograd.Function):
    """fp64 value rounded to ``dtype``; its gradient is rounded to ``dtype`` as well."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = dtype
        return x.to(dtype).double()

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.dtype).double(), None


def exact_on_rounded_logits(hidden, weight, targets, temperature=1.0):
    """fp64 log-probs and entropy from logits rounded to the inputs' dtype, whose gradient is
    rounded to that dtype too: the error inherent to storing the lm_head output in ``dtype``
    (see ``assert_close_to_ref``'s ``inherent``)."""
    logits = _RoundTo.apply(hidden.double() @ weight.double().T, hidden.dtype)
    return logprobs_from_logits_ref(logits, targets, temperature=temperature, return_entropy=True)


def assert_close_to_ref(
    name: str,
    out: torch.Tensor,
    ref: torch.Tensor,
    baseline: torch.Tensor,
    dtype: torch.dtype,
    *,
    inherent: torch.Tensor | None = None,
) -> None:
    """fp32: ``out`` within a tight tolerance of the fp64 ``ref``. Low precision: the error is
    at most twice plain PyTorch's error (``baseline``, computed at ``dtype``) plus ``TOL``.

    ``inherent`` (optional): exact math applied after the roundings the op's contract fixes
    (e.g. lm_head logits stored in ``dtype``). Plain PyTorch makes those roundings too, but its
    further roundings sometimes cancel them by luck at a dominant element, so the bound uses
    the larger of the two errors; a wrong kernel is still off by far more.
    """
    err = max_err(out, ref)
    scale = max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
    if dtype == torch.float32:
        assert err <= 1e-5 * scale + TOL[dtype], f"{name}: error {err:.3g} vs fp64"
    else:
        bound = low_precision_bound(ref, baseline, dtype, inherent=inherent)
        assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (2 x torch's + tol)"
