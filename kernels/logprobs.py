"""Per-token log-probabilities (and entropy) of target ids from logits.

``logprobs_from_logits`` reads each logits row once (an online log-sum-exp in Triton), keeps
only the fp32 ``(N,)`` log-sum-exp for backward, and can write the logits gradient into the
logits buffer itself. ``logprobs_from_logits_ref`` is the plain-PyTorch reference.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import library
from ._dispatch import check_same_device, check_shape, check_temperature, resolve_impl
from .tensor_parallel import ShardedLogprobs, shard_info

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_targets(targets: torch.Tensor, n: int, v_global: int, name: str = "targets") -> None:
    """ValueError unless ``targets`` is an integer ``(n,)`` tensor with ids in ``[0, v_global)``."""
    check_shape(name, targets, (n,))
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"{name} must hold integer token ids, got dtype {targets.dtype}")
    if n:
        lo, hi = torch.stack(torch.aminmax(targets)).tolist()  # one host sync for both
        if lo < 0 or hi >= v_global:
            raise ValueError(f"{name} must lie in [0, {v_global}), got values in [{lo}, {hi}]")


def _check_logits(logits: torch.Tensor, allow_fp64: bool) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, V_local), got shape {tuple(logits.shape)}")
    ok = LOGIT_DTYPES + ((torch.float64,) if allow_fp64 else ())
    if logits.dtype not in ok:
        raise ValueError(f"logits must have dtype in {ok}, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one vocabulary column")


def logprobs_from_logits_ref(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference: ``log_softmax(logits / T)[n, targets[n]]`` (and entropy).

    Computes in fp32 (fp64 for fp64 input) over the full vocabulary; returns ``(N,)``.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if not return_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def logprobs_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    return_entropy: bool = False,
    inplace_backward: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``targets`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``(N, V_local)`` fp32/bf16/fp16, any strides (e.g. a ``(B, T, V)`` slice viewed
            as ``(N, V)``). With ``tp_group`` it is this rank's contiguous vocabulary shard.
        targets: ``(N,)`` integer global token ids in ``[0, V)`` (``V = V_local·world``).
        temperature: logits are divided by it (also in the gradient).
        tp_group: vocabulary-parallel group (see ``tensor_parallel``); O(N) floats cross ranks.
        return_entropy: also return the entropy of each row's distribution.
        inplace_backward: write the logits gradient into the ``logits`` buffer (saves one
            ``(N, V_local)`` allocation; ``logits`` must not be needed by anything else).
        impl: ``"auto"`` (Triton on CUDA, PyTorch on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        fp32 ``(N,)`` log-probs, or ``(logp, entropy)`` when ``return_entropy``; no reduction.
    """
    path = resolve_impl(impl, logits)
    _check_logits(logits, allow_fp64=path == "torch" and tp_group is None)
    check_same_device(logits=logits, targets=targets)
    inv_temp = check_temperature(temperature)
    n, v_local = logits.shape
    _, v_global = shard_info(v_local, tp_group)
    check_targets(targets, n, v_global)
    targets = targets.contiguous()

    if tp_group is not None:
        logp, ent = ShardedLogprobs.apply(
            logits, targets, inv_temp, tp_group, library.get_backend(path), inplace_backward
        )
    elif path == "torch":
        return logprobs_from_logits_ref(
            logits, targets, temperature=temperature, return_entropy=return_entropy
        )
    else:
        logp, ent, _ = torch.ops.dsm_engine.logprobs(logits, targets, inv_temp, inplace_backward)
    return (logp, ent) if return_entropy else logp
