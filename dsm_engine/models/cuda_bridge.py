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
3. ``torch`` as seen by the megatron modules in :data:`LITERAL_CUDA_MODULES` -> a view of torch
   whose tensor factories map ``device="cuda"`` to the CPU. These modules create small
   bookkeeping tensors with a literal ``device="cuda"`` (not via ``current_device``), which
   patch 1 cannot reach: the pipeline schedules' token counter, the optimizers' loss-scale /
   found-inf flags, grad-norm clipping buffers, the DDP buffer warm-up tensor, the broadcast
   helper for data, the local multi-tensor grad-norm fallback, and the checkpoint saver's metadata-reuse flag. The view is set only on
   those modules. (``Tensor.cuda()`` calls remain: they sit on paths we do not use on CPU -
   optimizer CPU offload, fully-parallel checkpoint loading, ``broadcast_data``.)
4. megatron's CUDA RNG tracker -> :class:`CpuRNGStatesTracker`. The tracker keeps separate
   random streams for tensor-parallel regions (weight init of split layers, dropout) by saving
   and restoring the CUDA generator; on CPU the same bookkeeping is done with the CPU generator.
   The class replaces ``CudaRNGStatesTracker`` in ``megatron.core.tensor_parallel.random`` so
   ``initialize_rng_tracker`` (also with ``force_reset``) and ``get_all_rng_states`` keep working.
5. ``clip_grad_by_total_norm_fp32`` as used by ``megatron.core.optimizer.optimizer`` -> the same
   scaling without its assertion that every gradient is a ``torch.cuda.FloatTensor`` (the
   arithmetic is device-agnostic; only the type check names CUDA).
6. ``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` in ``megatron.core.tensor_parallel.random``
   -> the CPU generator's state. Activation recomputation (``CheckpointFunction``) saves and
   restores the device RNG around each recomputed region so dropout replays identically.
7. ``LanguageModule.setup_embeddings_and_output_layer`` runs with ``Tensor.cuda`` returning the
   tensor itself. With tied embeddings and pp > 1 it moves the last stage's copy of the word
   embeddings with ``weight.data.cuda()`` before all-reducing it over the embedding group; the
   data is already on the CPU, where the all-reduce runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

# (owner, attribute, original value) of every patch in place, in the order applied
_ORIGINALS: list[tuple[Any, str, Any]] = []

LITERAL_CUDA_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.tensor_parallel.data",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.utils",
)


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

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "empty_like", "zeros_like")

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


def _clip_grad_by_total_norm(
    parameters: Any, max_norm: float, total_norm: float, use_decoupled_grad: bool = False
) -> None:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    # Activation recomputation saves "the CUDA RNG state" around each checkpointed region so
    # dropout replays identically; on CPU the device generator is the CPU one.
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _without_tensor_cuda(fn: Any) -> Any:
    if getattr(fn, "_dsm_cpu", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        real = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.cuda = real

    wrapper._dsm_cpu = True  # type: ignore[attr-defined]
    return wrapper


def _patch(owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name = value``, remembering the original for :func:`uninstall_cpu_bridge`."""
    _ORIGINALS.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def install_cpu_bridge() -> bool:
    """Install the patches above when CUDA is absent. Idempotent; returns whether active.

    :func:`dsm_engine.models.parallel.initialize_parallel` installs it and
    :func:`~dsm_engine.models.parallel.destroy_parallel` removes it: the process is patched
    only while a parallel context exists.
    """
    if torch.cuda.is_available():
        return False
    if _ORIGINALS:
        return True
    import importlib

    from megatron.core.tensor_parallel import random as mrandom

    _patch(torch.cuda, "current_device", _cpu_current_device)  # patch 1
    _patch(torch.cuda, "synchronize", _no_synchronize)  # patch 2
    for name in LITERAL_CUDA_MODULES:  # patch 3
        module = importlib.import_module(name)
        if not isinstance(module.torch, _CpuTorchView):
            _patch(module, "torch", _CpuTorchView(torch))
    tracker_cls = _make_cpu_tracker_class()  # patch 4
    _patch(mrandom, "CudaRNGStatesTracker", tracker_cls)
    if mrandom._CUDA_RNG_STATE_TRACKER is not None and not isinstance(
        mrandom._CUDA_RNG_STATE_TRACKER, tracker_cls
    ):
        mrandom.initialize_rng_tracker(force_reset=True)
    moptimizer = importlib.import_module("megatron.core.optimizer.optimizer")
    _patch(moptimizer, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm)  # patch 5
    _patch(mrandom, "_get_cuda_rng_state", _cpu_get_rng_state)  # patch 6
    _patch(mrandom, "_set_cuda_rng_state", _cpu_set_rng_state)
    from megatron.core.models.common.language_module.language_module import LanguageModule

    _patch(  # patch 7
        LanguageModule,
        "setup_embeddings_and_output_layer",
        _without_tensor_cuda(LanguageModule.setup_embeddings_and_output_layer),
    )
    return True


def uninstall_cpu_bridge() -> None:
    """Undo :func:`install_cpu_bridge` (no-op when it is not installed)."""
    while _ORIGINALS:
        owner, name, original = _ORIGINALS.pop()
        setattr(owner, name, original)


@contextlib.contextmanager
def cpu_bridge() -> Iterator[bool]:
    """The bridge for the duration of a ``with`` block (yields whether it is active); restores
    what it patched on exit unless it was installed before the block."""
    already = bool(_ORIGINALS)
    active = install_cpu_bridge()
    try:
        yield active
    finally:
        if not already:
            uninstall_cpu_bridge()
