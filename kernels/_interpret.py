"""Running our Triton kernels on CPU tensors with Triton's interpreter, scoped to our launches.

Triton picks compiled or interpreted execution when a function is decorated (``@triton.jit``
reads ``TRITON_INTERPRET`` then), for every library in the process at once. Our kernels stay
ordinary compiled-mode ``JITFunction`` objects and are interpreted only where they are launched
on CPU tensors (``impl="triton"`` without CUDA: the tests, and users checking a kernel on a
laptop). Nothing here sets environment variables or reloads triton modules, so a process that
imports ``dsm_engine.kernels`` beside its own Triton code sees no change in it.

Inside an interpreted launch, the kernel's calls to other ``@triton.jit`` functions (our device
helpers and triton.language's own ``tl.sum``, ``tl.zeros``, ...) are compiled-mode objects too;
for the duration of the launch their call goes through an interpreted twin, which is what Triton
does itself when the whole process runs under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

_twins: dict[Any, InterpretedFunction] = {}
_scope_lock = threading.RLock()


def _twin(fn: JITFunction | InterpretedFunction) -> InterpretedFunction:
    if isinstance(fn, InterpretedFunction):
        return fn
    twin = _twins.get(fn.fn)
    if twin is None:
        twin = _twins[fn.fn] = InterpretedFunction(fn.fn)
    return twin


def _device_call(self: JITFunction, *args: Any, **kwargs: Any) -> Any:
    return _twin(self)(*args, **kwargs)


@contextmanager
def _device_calls_interpreted() -> Iterator[None]:
    # A compiled-mode JITFunction can never be called from Python (it raises), so rerouting
    # that call for the span of one launch changes nothing any other code could observe.
    with _scope_lock:
        original = JITFunction.__call__
        JITFunction.__call__ = _device_call
        try:
            yield
        finally:
            JITFunction.__call__ = original


class _InterpretedLaunch:
    def __init__(self, kernel: JITFunction | InterpretedFunction) -> None:
        self._kernel = _twin(kernel)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with _device_calls_interpreted():
                return self._kernel[grid](*args, **kwargs)

        return run


def launchable(kernel: JITFunction | InterpretedFunction, like: torch.Tensor) -> Any:
    """``kernel`` ready for ``[grid](...)`` on tensors living where ``like`` lives: itself on
    CUDA, an interpreted twin on the CPU."""
    if like.is_cuda or isinstance(kernel, InterpretedFunction):
        return kernel
    return _InterpretedLaunch(kernel)
