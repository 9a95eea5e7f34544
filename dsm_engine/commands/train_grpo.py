"""``dsm train grpo``: GRPO reinforcement learning with verifiable rewards.

    dsm train grpo --config configs/grpo/tiny-cpu-arithmetic.yaml run_dir=runs/grpo
    torchrun --nproc_per_node 8 --no-python dsm train grpo --config configs/grpo/deepseekmath-7b-grpo.yaml

The loop lives in :mod:`dsm_engine.grpo.trainer`; this module is the command.
"""

from __future__ import annotations

from dsm_engine.grpo.config import GRPOConfig
from dsm_engine.grpo.trainer import run_grpo
from dsm_engine.trainers.common import run_main

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Entry point of ``dsm train grpo --config X.yaml [key=value ...]``."""
    return run_main("dsm train grpo", GRPOConfig, argv, run_grpo)
