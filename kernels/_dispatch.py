"""Choosing between the Triton kernels and the PyTorch references, and input checks.

Without CUDA, Triton kernels run under Triton's interpreter. The interpreter is selected when
a function is decorated with ``@triton.jit``, so ``dsm_engine.kernels`` turns it on (only when
CUDA is absent and the user has not decided otherwise) before any kernel module is imported.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Impl = Literal["auto", "triton", "torch"]
IMPLS = ("auto", "triton", "torch")


def enable_interpreter_without_cuda() -> None:
    """Select Triton's CPU interpreter when no CUDA device exists (idempotent)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def resolve_impl(impl: str, tensor: torch.Tensor) -> Literal["triton", "torch"]:
    """Return the implementation to run for inputs living where ``tensor`` lives.

    ``auto`` picks Triton for CUDA tensors and the PyTorch reference otherwise; ``triton`` on
    CPU tensors runs under the interpreter (and is an error if the interpreter is off).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if not tensor.is_cuda and not interpreter_active():
        raise ValueError(
            "impl='triton' with CPU tensors needs Triton's interpreter (TRITON_INTERPRET=1), "
            "which dsm_engine.kernels enables only when CUDA is absent"
        )
    return "triton"


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError naming the first tensor that is not on the first tensor's device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {name0} is on {t0.device}")


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise ValueError naming ``name`` unless ``tensor.shape == shape``."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
