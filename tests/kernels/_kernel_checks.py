"""Shared assertions for the kernel tests: error against fp64, bounded by plain PyTorch's."""

from __future__ import annotations

import os
import random
import zlib

import torch

from dsm_engine.kernels import logprobs_from_logits_ref

LOW_PRECISION = (torch.bfloat16, torch.float16)
# Slack added to the 2x bound, relative to the largest reference value: one unit in the last
# place of the dtype at 1.0 (bf16 2^-7, fp16 2^-10), so a lucky baseline cannot fail a kernel
# whose only error is storing its result in the dtype. On the GPU that store rounds to nearest
# (up to half a unit); the Triton interpreter (CI) truncates fp32 -> bf16 (up to a whole unit:
# a case failed on 2% of random draws with half a unit as the slack).
TOL = {torch.float32: 2e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


# Fresh inputs every run, reproducible: DSM_TEST_SEED=<printed seed> pytest ... replays a run.
BASE_SEED = int(os.environ.get("DSM_TEST_SEED", random.randrange(2**31)))


def seeded(*key) -> torch.Generator:
    """A generator for the test case ``key``, from this run's ``BASE_SEED`` (printed)."""
    print(f"DSM_TEST_SEED={BASE_SEED}")  # shown by pytest when the test fails
    mixed = (BASE_SEED + zlib.crc32(repr(tuple(str(k) for k in key)).encode())) % 2**31
    return torch.Generator().manual_seed(mixed)


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
