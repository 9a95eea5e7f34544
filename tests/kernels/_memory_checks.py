"""Allocation recorders for the kernel memory tests (``TorchDispatchMode``s: they see every
tensor an op produces, on any device, without a GPU's allocator statistics)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


class PeakLiveElements(TorchDispatchMode):
    """Records the peak of the summed sizes (in elements, or in bytes with ``in_bytes``) of
    the storages that ops produce while active and that are still alive: two chunk buffers
    alive at once count twice. Storages of ``inputs`` (and their views) are not counted."""

    def __init__(self, *, in_bytes: bool = False, inputs: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.in_bytes = in_bytes
        self.live = self.peak = 0
        self._storages: set[int] = {x.untyped_storage().data_ptr() for x in inputs}

    def _release(self, key: int, n: int) -> None:
        self._storages.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
                continue
            key = t.untyped_storage().data_ptr()
            if key in self._storages:  # a view or an in-place result: no new memory
                continue
            n = t.untyped_storage().nbytes() // (1 if self.in_bytes else t.element_size())
            self._storages.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key, n)
        return out
