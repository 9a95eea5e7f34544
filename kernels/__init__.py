"""Triton kernels for GRPO training, each beside its plain-PyTorch reference.

Public ops (each takes ``impl="auto"|"triton"|"torch"``): ``logprobs_from_logits``,
``fused_linear_logprobs``, ``fused_linear_grpo_loss``, ``kl_k3``, ``grpo_loss``,
``group_advantages``, ``process_advantages``; ``<op>_ref`` is the plain-PyTorch reference.

Importing this package never imports megatron-core, transformers or datatrove.
"""

if __name__ != "dsm_engine.kernels":
    # This folder is also importable as a top-level ``kernels`` whenever the checkout root is on
    # sys.path (``python -m pytest`` run there), and transformers probes for Hugging Face's
    # ``kernels`` package by importing that name. Running the modules a second time under other
    # names would define every ``dsm_engine::*`` torch.library op again; torch then destroys the
    # first definitions while dsm_engine.kernels still calls them (a use-after-free: segfaults,
    # ``ValueError: vector::reserve``, wrong results). So under a foreign name this package only
    # re-exports dsm_engine.kernels (absolute imports below) and has no submodules of its own.
    __path__: list[str] = []

from dsm_engine.kernels._dispatch import enable_interpreter_without_cuda  # noqa: E402

# Must run before any module below decorates a function with @triton.jit.
enable_interpreter_without_cuda()

from dsm_engine.kernels.advantages import (  # noqa: E402
    group_advantages,
    group_advantages_ref,
    process_advantages,
    process_advantages_ref,
)
from dsm_engine.kernels.fused_linear import (  # noqa: E402
    default_chunk_sizes,
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    fused_linear_logprobs,
    fused_linear_logprobs_ref,
)
from dsm_engine.kernels.grpo_loss import LOSS_AGGS, grpo_loss, grpo_loss_ref  # noqa: E402
from dsm_engine.kernels.kl import kl_k3, kl_k3_ref  # noqa: E402
from dsm_engine.kernels.logprobs import logprobs_from_logits, logprobs_from_logits_ref  # noqa: E402

__all__ = [
    "LOSS_AGGS",
    "default_chunk_sizes",
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
