"""The k3 KL estimator of DeepSeekMath: ``exp(ref - logp) - (ref - logp) - 1`` per token.

It is an unbiased, always non-negative estimate of ``KL(pi_theta || pi_ref)`` from samples of
``pi_theta``. Its gradient w.r.t. ``logp`` is ``1 - exp(ref - logp)``, w.r.t. ``ref_logp``
``exp(ref - logp) - 1``.

One formula everywhere (``k3_and_expm1`` in Triton, ``k3_and_expm1_torch`` its PyTorch twin):
near ``d = ref - logp = 0``, ``exp(d)`` and ``1 + d`` agree in most digits and the paper's
formula cancels to noise while k3 ~ d^2/2, so ``|d| < 1`` sums the Taylor series instead.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._dispatch import check_same_device, check_shape, resolve_impl
from ._interpret import launchable

_BLOCK = 1024


# Taylor coefficients 1/n! of k3 = sum_{n>=2} d^n/n!, highest order first (Horner). The
# truncation at |d| < 1 is below the rounding of the dtype: n = 12 for fp32 (and bf16/fp16, as
# the Triton kernel), n = 18 for fp64, so autograd's derivative of the series is exact too.
_SERIES_FP32 = tuple(1.0 / math.factorial(n) for n in range(12, 1, -1))
_SERIES_FP64 = tuple(1.0 / math.factorial(n) for n in range(18, 1, -1))


def k3_and_expm1_torch(d: Tensor) -> tuple[Tensor, Tensor]:
    """``(exp(d) - d - 1, exp(d) - 1)`` in ``d``'s dtype, accurate for ``d`` near 0: the PyTorch
    twin of the Triton ``k3_and_expm1`` (same series for ``|d| < 1``, the direct formula
    elsewhere). Differentiable; the series' derivative is ``exp(d) - 1`` to the dtype's
    rounding."""
    small = d.abs() < 1.0
    x = torch.where(small, d, 0.0)
    coeffs = _SERIES_FP64 if d.dtype == torch.float64 else _SERIES_FP32
    s = coeffs[0]
    for c in coeffs[1:]:
        s = c + x * s
    series = x * x * s
    direct = torch.exp(torch.where(small, 0.0, d)) - d - 1.0
    k3 = torch.where(small, series, direct)
    return k3, k3 + d


def kl_k3_ref(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Plain PyTorch k3 in the inputs' promoted dtype (``k3_and_expm1_torch``)."""
    return k3_and_expm1_torch(ref_logp - logp)[0]


@triton.jit
def k3_and_expm1(d):
    """Return ``(exp(d) - d - 1, exp(d) - 1)`` in fp32, accurate for ``d`` near 0: for
    ``|d| < 1`` the Taylor series sum_{n>=2} d^n/n! to n = 12 (``_SERIES_FP32``), whose
    truncation is below fp32 rounding there. ``k3_and_expm1_torch`` is the same in PyTorch.
    """
    small = tl.abs(d) < 1.0
    x = tl.where(small, d, 0.0)
    s = 1.0 / 479001600.0
    s = 1.0 / 39916800.0 + x * s
    s = 1.0 / 3628800.0 + x * s
    s = 1.0 / 362880.0 + x * s
    s = 1.0 / 40320.0 + x * s
    s = 1.0 / 5040.0 + x * s
    s = 1.0 / 720.0 + x * s
    s = 1.0 / 120.0 + x * s
    s = 1.0 / 24.0 + x * s
    s = 1.0 / 6.0 + x * s
    s = 0.5 + x * s
    series = x * x * s
    direct = tl.exp(tl.where(small, 0.0, d)) - d - 1.0
    k3 = tl.where(small, series, direct)
    return k3, k3 + d


@triton.jit
def _kl_k3_fwd_kernel(logp_ptr, ref_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    logp = tl.load(logp_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    ref = tl.load(ref_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    k3, _ = k3_and_expm1(ref - logp)
    tl.store(out_ptr + offs, k3, mask=inb)


@triton.jit
def _kl_k3_bwd_kernel(
    grad_ptr,
    logp_ptr,
    ref_ptr,
    dlogp_ptr,
    dref_ptr,
    n,
    REF_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    g = tl.load(grad_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    logp = tl.load(logp_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    ref = tl.load(ref_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    _, em1 = k3_and_expm1(ref - logp)
    tl.store(dlogp_ptr + offs, (-g * em1).to(dlogp_ptr.dtype.element_ty), mask=inb)
    if REF_GRAD:
        tl.store(dref_ptr + offs, (g * em1).to(dref_ptr.dtype.element_ty), mask=inb)


def _flat(t: Tensor) -> Tensor:
    return t.contiguous().view(-1)


def _kl_k3_fwd_launch(logp: Tensor, ref_logp: Tensor) -> Tensor:
    out = torch.empty(logp.shape, dtype=torch.float32, device=logp.device)
    n = logp.numel()
    if n:
        grid = (triton.cdiv(n, _BLOCK),)
        launchable(_kl_k3_fwd_kernel, logp)[grid](
            _flat(logp), _flat(ref_logp), out.view(-1), n, BLOCK=_BLOCK
        )
    return out


def _kl_k3_bwd_launch(
    grad: Tensor, logp: Tensor, ref_logp: Tensor, ref_grad: bool
) -> tuple[Tensor, Tensor]:
    dlogp = torch.empty(logp.shape, dtype=logp.dtype, device=logp.device)
    # Without a ref gradient the kernel never touches dref; an empty tensor keeps the op's
    # output list fixed for torch.library.
    dref = torch.empty(
        ref_logp.shape if ref_grad else (0,), dtype=ref_logp.dtype, device=logp.device
    )
    n = logp.numel()
    if n:
        grid = (triton.cdiv(n, _BLOCK),)
        launchable(_kl_k3_bwd_kernel, logp)[grid](
            _flat(grad),
            _flat(logp),
            _flat(ref_logp),
            dlogp.view(-1),
            dref.view(-1) if ref_grad else dlogp.view(-1),
            n,
            REF_GRAD=ref_grad,
            BLOCK=_BLOCK,
        )
    return dlogp, dref


@torch.library.custom_op("dsm_engine::kl_k3_fwd", mutates_args=())
def kl_k3_fwd_op(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Triton k3 forward: fp32 output of ``logp``'s shape."""
    return _kl_k3_fwd_launch(logp, ref_logp)


@kl_k3_fwd_op.register_fake
def _(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return torch.empty(logp.shape, dtype=torch.float32, device=logp.device)


@torch.library.custom_op("dsm_engine::kl_k3_bwd", mutates_args=())
def kl_k3_bwd_op(
    grad: Tensor, logp: Tensor, ref_logp: Tensor, ref_grad: bool
) -> tuple[Tensor, Tensor]:
    """Triton k3 backward: ``(dlogp, dref)``; ``dref`` is empty unless ``ref_grad``."""
    return _kl_k3_bwd_launch(grad, logp, ref_logp, ref_grad)


@kl_k3_bwd_op.register_fake
def _(grad: Tensor, logp: Tensor, ref_logp: Tensor, ref_grad: bool) -> tuple[Tensor, Tensor]:
    dref_shape = ref_logp.shape if ref_grad else (0,)
    return (
        torch.empty(logp.shape, dtype=logp.dtype, device=logp.device),
        torch.empty(dref_shape, dtype=ref_logp.dtype, device=logp.device),
    )


class KLK3Function(torch.autograd.Function):
    """Autograd for the Triton k3 op; also registered on ``dsm_engine::kl_k3_fwd``."""

    @staticmethod
    def forward(logp: Tensor, ref_logp: Tensor) -> Tensor:
        return kl_k3_fwd_op(logp, ref_logp)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        logp, ref_logp = inputs
        ctx.save_for_backward(logp, ref_logp)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logp, ref_logp = ctx.saved_tensors
        logp_grad, ref_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (logp_grad or ref_grad):
            return None, None
        dlogp, dref = kl_k3_bwd_op(grad, logp, ref_logp, ref_grad)
        return (dlogp if logp_grad else None), (dref if ref_grad else None)


torch.library.register_autograd(
    "dsm_engine::kl_k3_fwd", KLK3Function.backward, setup_context=KLK3Function.setup_context
)


def kl_k3(logp: Tensor, ref_logp: Tensor, *, impl: str = "auto") -> Tensor:
    """Per-token k3 estimate of ``KL(pi_theta || pi_ref)``: ``exp(ref - logp) - (ref - logp) - 1``.

    logp, ref_logp: same shape (any), floating (fp32/bf16/fp16/fp64), same device.
    Returns: fp32 tensor of that shape, no reduction (math in fp32; fp64 inputs under
    ``impl="torch"`` are computed in fp64 then rounded). Differentiable w.r.t. both inputs:
    ``d/dlogp = 1 - exp(ref - logp)``, ``d/dref = exp(ref - logp) - 1``; gradients come back
    in each input's dtype.
    impl: ``"auto"`` (Triton on CUDA, PyTorch on CPU), ``"triton"`` or ``"torch"``.
    """
    for name, t in (("logp", logp), ("ref_logp", ref_logp)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    check_same_device(logp=logp, ref_logp=ref_logp)
    check_shape("ref_logp", ref_logp, tuple(logp.shape))
    if resolve_impl(impl, logp) == "torch":
        dtype = torch.float64 if torch.float64 in (logp.dtype, ref_logp.dtype) else torch.float32
        return kl_k3_ref(logp.to(dtype), ref_logp.to(dtype)).to(torch.float32)
    return KLK3Function.apply(logp, ref_logp)
