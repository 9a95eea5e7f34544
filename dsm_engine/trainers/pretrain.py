"""``dsm train pretrain``: continued pretraining on blended megatron indexed datasets.

dsm train pretrain --config configs/deepseekmath-7b-cpt.yaml run_dir=runs/cpt
torchrun --nnodes N --nproc_per_node 8 -m dsm_engine.cli train pretrain --config ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsm_engine.models.config import ModelConfig
from dsm_engine.trainers.common import run_main
from dsm_engine.trainers.config import PretrainConfig
from dsm_engine.trainers.data import build_pretrain_dataset, check_blend
from dsm_engine.trainers.loop import train
from dsm_engine.trainers.run_dir import RunDir
from dsm_engine.trainers.session import StepHook


def run_pretrain(cfg: PretrainConfig, *, on_step_end: StepHook | None = None) -> list[float]:
    """Train per ``cfg``; returns the loss of every step this call ran."""
    check_blend(cfg.data)  # a missing or empty shard fails before the run folder is touched
    if cfg.data.tokenizer and not Path(cfg.data.tokenizer).exists():
        raise FileNotFoundError(f"data.tokenizer: {cfg.data.tokenizer} does not exist")

    def make_dataset(run: RunDir, model_cfg: ModelConfig) -> Any:
        t = cfg.train
        return build_pretrain_dataset(
            cfg.data,
            seq_length=model_cfg.seq_length,
            num_samples=t.steps * t.global_batch_size,
            vocab_size=model_cfg.vocab_size,
            cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.path / "data_cache",
        )

    return train(
        cfg,
        make_dataset,
        description="pretrain",
        tokenizer=cfg.data.tokenizer,
        on_step_end=on_step_end,
    )


def main(argv: list[str]) -> int:
    """Entry point of ``dsm train pretrain --config X.yaml [key=value ...]``."""
    return run_main("dsm train pretrain", PretrainConfig, argv, run_pretrain)
