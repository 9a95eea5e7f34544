"""Choosing between the Triton kernels and the PyTorch references, and input checks.

Triton kernels launched on CPU tensors run under Triton's interpreter, scoped to that launch
(``_interpret.launchable``); nothing here changes process-wide state.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Impl = Literal["auto", "triton", "torch"]
IMPLS = ("auto", "triton", "torch")


def resolve_impl(impl: str, tensor: torch.Tensor) -> Literal["triton", "torch"]:
    """Return the implementation to run for inputs living where ``tensor`` lives.

    ``auto`` picks Triton for CUDA tensors and the PyTorch reference otherwise; ``triton`` on
    CPU tensors runs the kernels under Triton's interpreter (slow; for tests and checks).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if tensor.is_cuda else "torch"
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


def check_positive_int(name: str, value: object) -> int:
    """Return ``value``; ValueError naming ``name`` unless it is a positive int (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_group_size(group_size: object, batch: int, *, name: str = "group_size") -> int:
    """Validate ``group_size`` as a positive int dividing ``batch``; return it."""
    check_positive_int(name, group_size)
    if batch % group_size != 0:
        raise ValueError(f"{name}={group_size} does not divide the batch size {batch}")
    return group_size


def check_temperature(temperature: float) -> float:
    """Return ``1 / temperature``; ValueError unless it is a positive finite number."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return 1.0 / t
