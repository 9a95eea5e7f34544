"""``torch.library`` registrations of the Triton paths, so ``torch.compile`` can trace them.

Ops (namespace ``dsm_engine``), each with a fake (meta) implementation:

* ``logsoftmax_stats(logits, targets, vocab_start, inv_temp, shift?) -> (lse, tgt, px)``
* ``logsoftmax_grad(logits, targets, lse, px, grad_logp, grad_ent?, grad_lse?, vocab_start,
  inv_temp)``
  ``-> grad_logits`` and its in-place twin ``logsoftmax_grad_`` (mutates ``logits``)
* ``logprobs(logits, targets, inv_temp, inplace_backward) -> (logp, entropy, lse)``, the
  single-device log-prob op, with a registered autograd formula built on the two above.

The chunked fused-linear ops and the tensor-parallel path are ``torch.autograd.Function``s that
call these ops, so their Triton work is visible to the compiler as the same opaque kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from . import _logsoftmax as _ls


@torch.library.custom_op("dsm_engine::logsoftmax_stats", mutates_args=())
def logsoftmax_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    inv_temp: float,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _ls.stats_triton(logits, targets, vocab_start, inv_temp, shift)


@logsoftmax_stats.register_fake
def _(logits, targets, vocab_start, inv_temp, shift=None):
    n = logits.shape[0]
    return tuple(logits.new_empty((n,), dtype=torch.float32) for _ in range(3))


@torch.library.custom_op("dsm_engine::logsoftmax_grad", mutates_args=())
def logsoftmax_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    px: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    vocab_start: int,
    inv_temp: float,
) -> torch.Tensor:
    return _ls.grad_triton(
        logits, targets, lse, px, grad_logp, grad_ent, vocab_start, inv_temp, grad_lse=grad_lse
    )


@logsoftmax_grad.register_fake
def _(logits, targets, lse, px, grad_logp, grad_ent, grad_lse, vocab_start, inv_temp):
    return logits.new_empty(logits.shape)


@torch.library.custom_op("dsm_engine::logsoftmax_grad_", mutates_args=("logits",))
def logsoftmax_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    px: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    vocab_start: int,
    inv_temp: float,
) -> None:
    _ls.grad_triton(
        logits,
        targets,
        lse,
        px,
        grad_logp,
        grad_ent,
        vocab_start,
        inv_temp,
        out=logits,
        grad_lse=grad_lse,
    )


@logsoftmax_grad_.register_fake
def _(logits, targets, lse, px, grad_logp, grad_ent, grad_lse, vocab_start, inv_temp):
    return None


@torch.library.custom_op("dsm_engine::logprobs", mutates_args=())
def logprobs(
    logits: torch.Tensor, targets: torch.Tensor, inv_temp: float, inplace_backward: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lse, tgt, px = _ls.stats_triton(logits, targets, 0, inv_temp)
    return tgt - lse, lse - px, lse


@logprobs.register_fake
def _(logits, targets, inv_temp, inplace_backward):
    n = logits.shape[0]
    return tuple(logits.new_empty((n,), dtype=torch.float32) for _ in range(3))


def _logprobs_setup(ctx, inputs, output):
    logits, targets, inv_temp, inplace_backward = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, targets, entropy, lse)
    ctx.inv_temp = inv_temp
    ctx.inplace = inplace_backward


def _logprobs_backward(ctx, grad_logp, grad_ent, grad_lse):
    logits, targets, entropy, lse = ctx.saved_tensors
    px = lse - entropy
    n = logits.shape[0]
    a = grad_logp if grad_logp is not None else lse.new_zeros(n)
    args = (targets, lse, px, a, grad_ent, grad_lse, 0, ctx.inv_temp)
    if ctx.inplace:
        torch.ops.dsm_engine.logsoftmax_grad_(logits, *args)
        grad = logits
    else:
        grad = torch.ops.dsm_engine.logsoftmax_grad(logits, *args)
    return grad, None, None, None


logprobs.register_autograd(_logprobs_backward, setup_context=_logprobs_setup)


class Backend(NamedTuple):
    """The two primitives a chunked or sharded op needs, from Triton or from PyTorch.

    ``stats(logits, targets, vocab_start, inv_temp, shift=None, work=None) -> (lse, tgt, px)``;
    ``grad(logits, targets, lse, px, grad_logp, grad_ent, grad_lse, vocab_start, inv_temp,
    inplace, work=None) -> grad_logits`` (``inplace`` writes into and returns ``logits``).
    ``work``: two flat fp32 buffers of ``>= logits.numel()`` elements each that the PyTorch primitives
    build their chunk-sized temporaries in (``scratch`` is True for them); the Triton kernels
    need none and ignore it.
    """

    stats: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    grad: Callable[..., torch.Tensor]
    scratch: bool


def _triton_stats(logits, targets, vocab_start, inv_temp, shift=None, work=None):
    return torch.ops.dsm_engine.logsoftmax_stats(logits, targets, vocab_start, inv_temp, shift)


def _triton_grad(logits, targets, lse, px, ga, gc, glse, vocab_start, inv_temp, inplace, work=None):
    args = (targets, lse, px, ga, gc, glse, vocab_start, inv_temp)
    if inplace:
        torch.ops.dsm_engine.logsoftmax_grad_(logits, *args)
        return logits
    return torch.ops.dsm_engine.logsoftmax_grad(logits, *args)


def _torch_grad(logits, targets, lse, px, ga, gc, glse, vocab_start, inv_temp, inplace, work=None):
    out = logits if inplace else None
    return _ls.grad_torch(
        logits, targets, lse, px, ga, gc, vocab_start, inv_temp, out=out, grad_lse=glse, work=work
    )


TRITON_BACKEND = Backend(_triton_stats, _triton_grad, scratch=False)
TORCH_BACKEND = Backend(_ls.stats_torch, _torch_grad, scratch=True)


def get_backend(path: str) -> Backend:
    """``"triton"`` -> the registered Triton ops; ``"torch"`` -> their PyTorch twins."""
    return TRITON_BACKEND if path == "triton" else TORCH_BACKEND
