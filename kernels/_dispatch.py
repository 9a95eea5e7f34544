"""Choosing between the Triton kernels and the PyTorch references, and input checks.

Without CUDA, Triton kernels run under Triton's interpreter. The interpreter is selected when
a function is decorated with ``@triton.jit``, so ``dsm_engine.kernels`` turns it on (only when
CUDA is absent and the user has not decided otherwise) before any kernel module is imported.

That decoration-time choice also applies to Triton's own ``@jit`` library functions
(``tl.zeros``, ``tl.sum``, ``tl.max``, ... in ``triton.language.standard`` / ``.random``). When
triton was imported before us with the interpreter off - ``import megatron.core`` and
``torch._inductor`` both import it - those stay compiled-mode ``JITFunction`` objects and every
interpreted kernel that calls one fails with "Cannot call @triton.jit'd outside of the scope of
a kernel". :func:`enable_interpreter_without_cuda` therefore re-runs the triton.language
modules that hold such functions once (``importlib.reload``), so they are re-decorated for the
interpreter, and re-binds the names ``triton.language`` re-exports.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Literal

import torch

Impl = Literal["auto", "triton", "torch"]
IMPLS = ("auto", "triton", "torch")


def enable_interpreter_without_cuda() -> None:
    """Select Triton's CPU interpreter when no CUDA device exists (idempotent)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if interpreter_active():
            _reinterpret_triton_library()


def _reinterpret_triton_library() -> None:
    """Re-decorate triton.language's own @jit functions for the interpreter when triton was
    imported with it off (see the module docstring); a no-op when triton is not imported yet."""
    if "triton.language" not in sys.modules:
        return
    from triton.runtime.jit import JITFunction

    lang = [
        (name, module)
        for name, module in list(sys.modules.items())
        if module is not None and (name == "triton.language" or name.startswith("triton.language."))
    ]
    replaced: dict[int, tuple[object, object]] = {}  # id(old) -> (old, new); old kept alive
    for name, module in lang:
        stale = {
            attr: fn
            for attr, fn in vars(module).items()
            if isinstance(fn, JITFunction) and getattr(fn.fn, "__module__", None) == name
        }
        if stale:
            importlib.reload(module)  # @jit now returns interpreted functions
            replaced.update({id(fn): (fn, getattr(module, attr)) for attr, fn in stale.items()})
    for _, module in lang:  # names re-exported elsewhere (``tl.zeros`` is standard's ``zeros``)
        for attr, value in list(vars(module).items()):
            pair = replaced.get(id(value))
            if pair is not None and pair[0] is value:
                setattr(module, attr, pair[1])


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
