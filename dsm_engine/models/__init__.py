"""Model layer: Llama / DeepSeekMath on megatron-core (TP, PP, HF interop, checkpoints).

Names are imported lazily so ``import dsm_engine.models`` (for configs) stays cheap and does
not import megatron-core until a model is built.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "config",
    "MODEL_PRESETS": "config",
    "model_config": "config",
    "to_transformer_config": "config",
    "ParallelConfig": "parallel",
    "ParallelContext": "parallel",
    "initialize_parallel": "parallel",
    "destroy_parallel": "parallel",
    "current_context": "parallel",
    "parallel_session": "parallel",
    "require_context": "parallel",
    "install_cpu_bridge": "cuda_bridge",
    "uninstall_cpu_bridge": "cuda_bridge",
    "cpu_bridge": "cuda_bridge",
    "build_model": "build",
    "build_model_chunks": "build",
    "copy_weights": "build",
    "forward_hidden": "build",
    "lm_head_weight": "build",
    "model_logits": "build",
    "hf_config": "convert",
    "model_config_from_hf": "convert",
    "export_hf_state_dict": "convert",
    "load_hf_weights": "convert",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "from_pretrained": "pretrained",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
