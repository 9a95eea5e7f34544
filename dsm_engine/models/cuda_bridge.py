"""The one place that lets megatron-core 0.16.1 run on a machine without CUDA.

megatron-core assumes a GPU in a handful of spots that are otherwise device-agnostic. On a
CPU-only machine :func:`install_cpu_bridge` patches exactly those, and nothing else in
dsm-engine special-cases the CPU. With CUDA present it does nothing. Each patch says why:

1. ``torch.cuda.current_device`` -> ``torch.device("cpu")``. megatron allocates parameters and
   buffers with ``device=torch.cuda.current_device()`` (rotary inverse frequencies, parallel
   linear / embedding weights, p2p shape buffers, TP gather buffers, dist-checkpoint
   bookkeeping). Without CUDA that call raises; answering "cpu" makes those allocations land
   where everything else lives. Code that checks ``torch.cuda.is_available()`` first (torch,
   transformers) never reaches it, so nothing that worked before changes.
2. ``torch.cuda.synchronize`` -> no-op. p2p communication and the async checkpoint writer wait
   for the GPU stream; CPU kernels are already complete when they return.
3. ``torch`` as seen by ``megatron.core.pipeline_parallel.schedules`` -> a view of torch whose
   tensor factories map ``device="cuda"`` to the CPU. The schedules count tokens in a tensor
   created with a literal ``device="cuda"`` (not via ``current_device``), so patch 1 misses it;
   the view is local to that module.
4. megatron's CUDA RNG tracker -> :class:`CpuRNGStatesTracker`. The tracker keeps separate
   random streams for tensor-parallel regions (weight init of split layers, dropout) by saving
   and restoring the CUDA generator; on CPU the same bookkeeping is done with the CPU generator.
   The class replaces ``CudaRNGStatesTracker`` in ``megatron.core.tensor_parallel.random`` so
   ``initialize_rng_tracker`` (also with ``force_reset``) and ``get_all_rng_states`` keep working.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

_INSTALLED = False


def _cpu_current_device() -> torch.device:
    return torch.device("cpu")


def _no_synchronize(device: Any = None) -> None:
    return None


def _map_cuda(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CpuTorchView:
    """``torch`` with tensor factories that place ``device="cuda"`` tensors on the CPU."""

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange")

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name in self._FACTORIES:

            @functools.wraps(attr)
            def factory(*args: Any, **kwargs: Any) -> Any:
                if "device" in kwargs:
                    kwargs["device"] = _map_cuda(kwargs["device"])
                return attr(*args, **kwargs)

            return factory
        return attr


def _make_cpu_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mrandom

    base = mrandom.CudaRNGStatesTracker
    if getattr(base, "_dsm_cpu", False):
        return base

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        """megatron's RNG tracker with named streams kept as CPU generator states."""

        _dsm_cpu = True

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


def install_cpu_bridge() -> bool:
    """Install the patches above when CUDA is absent. Idempotent; returns whether active."""
    global _INSTALLED
    if torch.cuda.is_available():
        return False
    if _INSTALLED:
        return True
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = _cpu_current_device  # patch 1
    torch.cuda.synchronize = _no_synchronize  # patch 2
    if not isinstance(schedules.torch, _CpuTorchView):  # patch 3
        schedules.torch = _CpuTorchView(torch)
    tracker_cls = _make_cpu_tracker_class()  # patch 4
    mrandom.CudaRNGStatesTracker = tracker_cls
    if mrandom._CUDA_RNG_STATE_TRACKER is not None and not isinstance(
        mrandom._CUDA_RNG_STATE_TRACKER, tracker_cls
    ):
        mrandom.initialize_rng_tracker(force_reset=True)
    _INSTALLED = True
    return True


def bridge_active() -> bool:
    """Whether :func:`install_cpu_bridge` has patched megatron-core in this process."""
    return _INSTALLED
