"""The CPU bridge patches the process only while a parallel context exists, and undoes itself."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the bridge is for CPU-only")


def _patched_names() -> dict[str, object]:
    from megatron.core.optimizer import optimizer as moptimizer
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mrandom

    return {
        "current_device": torch.cuda.current_device,
        "synchronize": torch.cuda.synchronize,
        "schedules.torch": schedules.torch,
        "tracker": mrandom.CudaRNGStatesTracker,
        "clip": moptimizer.clip_grad_by_total_norm_fp32,
        "rng_get": mrandom._get_cuda_rng_state,
    }


def test_destroy_parallel_restores_everything_initialize_patched():
    from dsm_engine.models.parallel import destroy_parallel, initialize_parallel

    destroy_parallel()  # whatever an earlier test left: the unpatched process
    before = _patched_names()
    with pytest.raises((RuntimeError, AssertionError)):
        torch.cuda.current_device()  # no CUDA, no bridge: torch's own error
    initialize_parallel()
    during = _patched_names()
    assert all(during[k] is not before[k] for k in before)
    assert torch.cuda.current_device() == torch.device("cpu")
    destroy_parallel()
    assert _patched_names() == before


def test_the_context_manager_leaves_an_outer_install_in_place():
    from dsm_engine.models.cuda_bridge import cpu_bridge, install_cpu_bridge, uninstall_cpu_bridge
    from dsm_engine.models.parallel import destroy_parallel

    destroy_parallel()
    before = _patched_names()
    with cpu_bridge() as active:
        assert active and torch.cuda.current_device() == torch.device("cpu")
    assert _patched_names() == before
    install_cpu_bridge()
    installed = _patched_names()
    with cpu_bridge():
        pass
    assert _patched_names() == installed  # the block did not install it, so it stays
    uninstall_cpu_bridge()
    uninstall_cpu_bridge()  # idempotent
    assert _patched_names() == before
