"""Run configs of the pretraining and SFT trainers: one small dataclass per component.

A YAML file holds the sections below; ``key=value`` arguments override any field
(``optim.clip_grad=0.5``, ``model.num_layers=4``, ``parallel.tp=2``). The ``model`` section is a
preset name plus field overrides (``{preset: deepseekmath-7b}``) or a full architecture; it is
resolved into a complete :class:`~dsm_engine.models.config.ModelConfig`, and the resolved
config (every field explicit) is what ``config.yaml`` in the run folder records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from dsm_engine.config import ConfigError, load_config, split_config_args
from dsm_engine.models.config import ModelConfig, model_config
from dsm_engine.models.parallel import ParallelConfig
from dsm_engine.trainers.data import DataConfig
from dsm_engine.trainers.optim import OptimConfig
from dsm_engine.trainers.profiling import ProfileConfig
from dsm_engine.trainers.schedules import ScheduleConfig
from dsm_engine.trainers.sft_data import SFTDataConfig


@dataclass
class TrainConfig:
    """Steps and batch shape. ``global_batch_size`` sequences per optimizer step, cut into
    microbatches of ``micro_batch_size`` per data-parallel rank (gradient accumulation)."""

    steps: int = 100
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seed: int = 1234
    recompute: Literal["none", "full"] = "none"

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "global_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class CheckpointConfig:
    """Save every ``every`` steps (and at the end) under ``<run_dir>/checkpoints``.
    ``load`` initialises the weights from a checkpoint (e.g. a converted Hugging Face model)
    when the run does not resume."""

    every: int = 1000
    load: str | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"checkpoint.every must be >= 1, got {self.every}")


@dataclass
class LoggingConfig:
    """Log every ``every`` steps to metrics.jsonl / TensorBoard / the progress bar."""

    every: int = 1
    tensorboard: bool = True
    progress: bool = True


@dataclass
class RunConfig:
    """Fields shared by every trainer's run config."""

    run_dir: str = "runs/run"
    overwrite: bool = False
    resume: Literal["never", "auto"] = "never"
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def model_config(self) -> ModelConfig:
        """The resolved architecture (a preset with overrides, or explicit fields)."""
        return resolve_model(self.model)


@dataclass
class PretrainConfig(RunConfig):
    """``dsm train pretrain``: continued pretraining on blended indexed datasets."""

    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class SFTConfig(RunConfig):
    """``dsm train sft``: supervised fine-tuning on JSON Lines, packed."""

    data: SFTDataConfig = field(default_factory=SFTDataConfig)


def resolve_model(section: dict[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from ``{preset: name, field: value, ...}`` or explicit fields."""
    rest = dict(section)
    preset = rest.pop("preset", None)
    try:
        return model_config(preset, **rest) if preset else model_config(rest)
    except ConfigError as e:
        raise ConfigError(f"model: {e}") from None


C = TypeVar("C", bound=RunConfig)


def load_run_config(cls: type[C], argv: list[str]) -> tuple[C, list[str]]:
    """Parse ``[--config PATH] key=value ...`` into ``cls`` with the model section resolved.

    Returns the config and the arguments that were neither (for the caller to reject or use).
    """
    path, overrides, rest = split_config_args(argv)
    cfg = load_config(cls, Path(path) if path else None, overrides)
    cfg.model = dataclasses.asdict(cfg.model_config())
    return cfg, rest
