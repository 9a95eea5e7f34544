"""Triton kernels for GRPO training, each beside its plain-PyTorch reference.

Importing this package never imports megatron-core, transformers or datatrove.
"""

from ._dispatch import enable_interpreter_without_cuda

enable_interpreter_without_cuda()
