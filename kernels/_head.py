"""The fused lm_head ops' arguments, checked once, and where their weight gradient is summed.

``resolve_head`` validates ``hidden``, ``weight``, ``targets`` and the ``HeadOptions`` and
returns the ``Head`` the chunk loops run with (``_head_chunks``). ``grad_weight_accumulator``
and ``grad_weight_result`` hold the three ``grad_weight`` modes; see ``fused_linear``'s module
docstring for what each costs.

``"main_grad"`` follows megatron-core's DDP (0.16.1, ``distributed/distributed_data_parallel.py``).
DDP gives every trainable parameter ``main_grad`` (a view of its contiguous grad buffer, fp32
with ``grad_reduce_in_fp32``) and ``grad_added_to_main_grad = False``, and hooks each parameter's
gradient accumulator: once autograd has accumulated ``param.grad`` the hook does
``main_grad += grad`` unless ``grad_added_to_main_grad`` is set (and megatron's
``zero_out_wgrad`` is not), then ``param.grad = None``; under ``overlap_grad_reduce`` it first
asserts that ``param.grad`` is set, then marks the parameter ready for its bucket's reduction.
Megatron's own fused weight gradient (``tensor_parallel/layers.py``) adds into ``main_grad``,
sets ``grad_added_to_main_grad`` and hands autograd a ``(V, H)`` dummy gradient for the hook.

We add into ``main_grad`` and hand autograd ``None``, so nothing of the weight's size is
allocated; the hook still runs (autograd calls the accumulator with an undefined gradient). The
flag stays unset, so the hook adds whatever else reached ``.grad`` (the input embedding's
gradient when the weights are tied at pp=1); set, it would drop such a gradient until the next
``zero_grad_buffer`` unless megatron had marked the weight ``zero_out_wgrad`` (it does for tied
embeddings at pp=1). For a weight not so marked, ``.grad`` is set to one zero broadcast to the
weight's shape, which the hook adds (a no-op) and drops, so that ``overlap_grad_reduce`` finds
the gradient it asserts. (A weight that another layer also uses without that mark would then
have a gradient added into the broadcast zero: autograd refuses that loudly.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import library
from ._dispatch import check_same_device, check_shape, check_temperature, resolve_impl
from ._head_chunks import Head, cpu_one_pass_rows, resolve_chunk_sizes
from .logprobs import LOGIT_DTYPES, check_targets
from .options import GRAD_WEIGHT_ACCUM, HeadOptions
from .tensor_parallel import shard_info


def resolve_grad_weight_accum(
    mode: str, weight_dtype: torch.dtype, n: int, token_chunk: int
) -> bool:
    """Whether ``grad_weight`` is summed in an fp32 buffer when it is not summed into
    ``main_grad``; ``mode`` is ``HeadOptions.grad_weight_accum``. ValueError names it."""
    if mode not in GRAD_WEIGHT_ACCUM:
        raise ValueError(f"grad_weight_accum must be one of {GRAD_WEIGHT_ACCUM}, got {mode!r}")
    if weight_dtype == torch.float32 or mode in ("param", "main_grad"):
        return False
    return mode == "fp32" or n > token_chunk


def _main_grad(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight.main_grad`` when it is a usable accumulator; ValueError for one that is not."""
    main_grad = getattr(weight, "main_grad", None)
    if main_grad is None:
        return None
    if not isinstance(main_grad, torch.Tensor) or tuple(main_grad.shape) != tuple(weight.shape):
        raise ValueError(f"weight.main_grad must be a tensor of the weight's shape {weight.shape}")
    if main_grad.device != weight.device or main_grad.dtype not in (torch.float32, weight.dtype):
        raise ValueError(
            f"weight.main_grad must be fp32 or {weight.dtype} on {weight.device}, "
            f"got {main_grad.dtype} on {main_grad.device}"
        )
    return main_grad


def sums_into_main_grad(mode: str, weight: torch.Tensor) -> bool:
    """Whether ``mode`` (``grad_weight_accum``) adds this weight's gradient into its
    ``main_grad``; ValueError for ``"main_grad"`` without one, or for an unusable one."""
    main_grad = _main_grad(weight)
    if mode == "main_grad" and main_grad is None:
        raise ValueError(
            "grad_weight_accum='main_grad' needs weight.main_grad (megatron-core's "
            "DistributedDataParallel sets it)"
        )
    return mode == "main_grad" or (mode == "auto" and main_grad is not None)


def grad_weight_mode(mode: str, weight: torch.Tensor, n: int, token_chunk: int) -> str:
    """``"main_grad"``, ``"fp32"`` or ``"param"``: what ``mode`` (``grad_weight_accum``)
    means for this weight and ``n`` tokens in chunks of ``token_chunk``."""
    if sums_into_main_grad(mode, weight):
        return "main_grad"
    return "fp32" if resolve_grad_weight_accum(mode, weight.dtype, n, token_chunk) else "param"


def _fp32_row_temporaries(mode: str, weight: torch.Tensor) -> bool:
    """Whether the chunk loops hold fp32 ``(token_chunk, H)`` temporaries that row blocks may
    bound: low-precision inputs (the hidden gradient's fp32 sum over vocabulary slices, the
    fp32 copy of ``hidden`` for the weight gradient) whose weight gradient is summed in fp32
    (``main_grad`` or the ``"fp32"`` buffer), so that splitting the tokens costs it nothing.
    ``"param"`` and ``"auto"`` without ``main_grad`` keep one token chunk (one rounding)."""
    if weight.dtype == torch.float32 or mode not in GRAD_WEIGHT_ACCUM:
        return False
    main_grad = getattr(weight, "main_grad", None)
    fp32_main_grad = isinstance(main_grad, torch.Tensor) and main_grad.dtype == torch.float32
    return mode == "fp32" or (mode in ("auto", "main_grad") and fp32_main_grad)


def resolve_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    options: HeadOptions,
    *,
    hidden_dims: int,
    tp_group: dist.ProcessGroup | None,
    impl: str,
    one_pass: bool = False,
) -> Head:
    """The argument checks shared by both fused ops; ValueError names the argument.

    ``hidden`` is ``(N, H)`` (``hidden_dims=2``) or ``(B, T, H)`` (3); ``targets`` has its
    leading shape. ``one_pass``: the caller is the GRPO op computing its gradients, which has
    a one-pass path for fp32 on the CPU (``Head.one_pass``).
    """
    path = resolve_impl(impl, hidden)
    if hidden.dim() != hidden_dims:
        want = "(N, H)" if hidden_dims == 2 else "(B, T, H)"
        raise ValueError(f"hidden must be {hidden_dims}-D {want}, got shape {tuple(hidden.shape)}")
    if hidden.dtype not in LOGIT_DTYPES:
        raise ValueError(f"hidden must have dtype in {LOGIT_DTYPES}, got {hidden.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (V_local, H), got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one vocabulary row")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden's last dim {hidden.shape[-1]} must equal weight's dim 1 {weight.shape[1]}"
        )
    check_same_device(hidden=hidden, weight=weight, targets=targets)
    check_shape("targets", targets, tuple(hidden.shape[:-1]))
    n, h, v_local = hidden.shape[:-1].numel(), hidden.shape[-1], weight.shape[0]
    vocab_start, v_global = shard_info(v_local, tp_group)
    check_targets(targets.reshape(n), n, v_global, name="targets")
    on_cpu = path == "torch" and hidden.device.type == "cpu"
    tc, vc = resolve_chunk_sizes(
        n,
        h,
        v_local,
        options.token_chunk,
        options.vocab_chunk,
        cpu=on_cpu,
        fp32_rows=_fp32_row_temporaries(options.grad_weight_accum, weight),
    )
    # The GRPO op with gradients, fp32 on the CPU: token chunks over the whole vocabulary run
    # its in-place one-pass path, which the default chunk sizes pick for large N.
    in_place = one_pass and on_cpu and hidden.dtype == torch.float32
    chunks_given = options.token_chunk is not None or options.vocab_chunk is not None
    if in_place and not chunks_given and (rows := cpu_one_pass_rows(n)) is not None:
        tc, vc = rows, v_local
    return Head(
        backend=library.get_backend(path),
        inv_temp=check_temperature(options.temperature),
        vocab_start=vocab_start,
        token_chunk=tc,
        vocab_chunk=vc,
        grad_weight=grad_weight_mode(options.grad_weight_accum, weight, n, tc),  # type: ignore[arg-type]
        one_pass=in_place and vc >= v_local,
    )


def grad_weight_accumulator(weight: torch.Tensor, head: Head) -> torch.Tensor:
    """Where the chunk loops add ``grad_weight``: ``main_grad`` itself, or a zeroed buffer
    (fp32 in ``"fp32"`` mode, the weight's dtype in ``"param"`` mode)."""
    if head.grad_weight == "main_grad":
        return weight.main_grad
    dtype = torch.float32 if head.grad_weight == "fp32" else weight.dtype
    return torch.zeros(weight.shape, dtype=dtype, device=weight.device)


def grad_weight_result(acc: torch.Tensor, weight: torch.Tensor, head: Head) -> torch.Tensor | None:
    """What the autograd Function returns as the weight's gradient once ``acc`` is complete:
    the buffer (rounded once to the weight's dtype in ``"fp32"`` mode), or ``None`` when it
    went into ``main_grad`` (see the module docstring for megatron's hook)."""
    if head.grad_weight != "main_grad":
        return acc if acc.dtype == weight.dtype else acc.to(weight.dtype)
    ddp_managed = hasattr(weight, "grad_added_to_main_grad")
    if ddp_managed and not getattr(weight, "zero_out_wgrad", False) and weight.grad is None:
        weight.grad = weight.new_zeros(()).expand(weight.shape)
    return None
