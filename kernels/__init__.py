"""Triton kernels for GRPO training, each beside its plain-PyTorch reference.

Public ops (each takes ``impl="auto"|"triton"|"torch"``): ``logprobs_from_logits``,
``fused_linear_logprobs``, ``fused_linear_grpo_loss``, ``kl_k3``, ``grpo_loss``,
``group_advantages``, ``process_advantages``; ``<op>_ref`` is the plain-PyTorch reference.

Importing this package never imports megatron-core, transformers or datatrove.
"""

from ._dispatch import enable_interpreter_without_cuda

# Must run before any module below decorates a function with @triton.jit.
enable_interpreter_without_cuda()

from .advantages import (  # noqa: E402
    group_advantages,
    group_advantages_ref,
    process_advantages,
    process_advantages_ref,
)
from .fused_linear import (  # noqa: E402
    default_chunk_size,
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    fused_linear_logprobs,
    fused_linear_logprobs_ref,
)
from .grpo_loss import LOSS_AGGS, grpo_loss, grpo_loss_ref  # noqa: E402
from .kl import kl_k3, kl_k3_ref  # noqa: E402
from .logprobs import logprobs_from_logits, logprobs_from_logits_ref  # noqa: E402

__all__ = [
    "LOSS_AGGS",
    "default_chunk_size",
    "fused_linear_grpo_loss",
    "fused_linear_grpo_loss_ref",
    "fused_linear_logprobs",
    "fused_linear_logprobs_ref",
    "group_advantages",
    "group_advantages_ref",
    "grpo_loss",
    "grpo_loss_ref",
    "kl_k3",
    "kl_k3_ref",
    "logprobs_from_logits",
    "logprobs_from_logits_ref",
    "process_advantages",
    "process_advantages_ref",
]
