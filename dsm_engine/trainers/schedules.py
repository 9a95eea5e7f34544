"""Learning-rate schedules as pure functions of the step.

The schedule holds no state: the learning rate of step ``s`` (0-based, the step about to be
taken) is ``lr_at(cfg, s, total_steps)``. Resuming at step ``s`` therefore only needs ``s``,
which the checkpoint stores anyway, and the value can be checked against its formula.

``multistep`` is DeepSeekMath's schedule (paper, section 2.3): linear warm-up to the peak over
``warmup_steps`` steps, then the peak until 80% of training, 31.6% of the peak until 90%, and
10% of the peak for the rest. ``cosine`` warms up the same way and then follows a half cosine
from the peak down to ``min_lr_ratio`` times the peak at the last step. ``constant`` warms up and
stays at the peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from dsm_engine.config import ConfigError


@dataclass
class ScheduleConfig:
    """Learning-rate schedule. ``lr`` is the peak; the multistep milestones are fractions of
    the total number of steps, each with the factor applied from that point on."""

    name: Literal["multistep", "cosine", "constant"] = "multistep"
    lr: float = 4.2e-4
    warmup_steps: int = 2000
    milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    factors: list[float] = field(default_factory=lambda: [0.316, 0.1])
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"schedule.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if len(self.milestones) != len(self.factors):
            raise ConfigError(
                f"schedule.milestones ({len(self.milestones)}) and schedule.factors "
                f"({len(self.factors)}) must have the same length"
            )
        if sorted(self.milestones) != list(self.milestones) or any(
            not 0.0 <= m <= 1.0 for m in self.milestones
        ):
            raise ConfigError(f"schedule.milestones must rise within [0, 1], got {self.milestones}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_at(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """Learning rate of 0-based ``step`` in a run of ``total_steps`` optimizer steps.

    Warm-up is ``lr * (step + 1) / warmup_steps`` so that the first step already moves.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return cfg.lr
    if cfg.name == "multistep":
        factor = 1.0
        for milestone, f in zip(cfg.milestones, cfg.factors):
            # ">=" with a real-valued boundary: step 80 of 100 is the first at 80% of training.
            if step >= milestone * total_steps:
                factor = f
        return cfg.lr * factor
    if cfg.name == "cosine":
        decay_steps = max(total_steps - cfg.warmup_steps - 1, 1)
        progress = min(max((step - cfg.warmup_steps) / decay_steps, 0.0), 1.0)
        min_lr = cfg.lr * cfg.min_lr_ratio
        return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule.name {cfg.name!r}")


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group (works for torch and megatron-core optimizers)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
