"""``build_rollout_engine``: a rollout backend by name.

Kept apart from ``rollout.base`` (the types every engine imports) so that no module of the
rollout package imports one that imports it back.
"""

from __future__ import annotations

from dsm_engine.config import ConfigError
from dsm_engine.rollout.base import RolloutEngine


def build_rollout_engine(backend: str, hf_config, **kwargs) -> RolloutEngine:
    """``hf`` (transformers, CPU/GPU) or ``vllm`` (GPU, needs vllm importable); ``hf_config``
    is the policy's Hugging Face config and ``kwargs`` go to the engine's constructor."""
    if backend == "hf":
        from dsm_engine.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(hf_config, **kwargs)
    if backend == "vllm":
        from dsm_engine.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(hf_config, **kwargs)
    raise ConfigError(f"rollout.backend must be 'hf' or 'vllm', got {backend!r}")
