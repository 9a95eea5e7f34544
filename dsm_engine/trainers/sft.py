"""``dsm train sft``: supervised fine-tuning on JSON Lines with sequence packing.

dsm train sft --config configs/tiny-cpu-sft.yaml data.path=sft.jsonl checkpoint.load=ckpt
"""

from __future__ import annotations

from dsm_engine.models.config import ModelConfig
from dsm_engine.trainers.common import run_main
from dsm_engine.trainers.config import SFTConfig
from dsm_engine.trainers.loop import train
from dsm_engine.trainers.run_dir import RunDir
from dsm_engine.trainers.session import StepHook
from dsm_engine.trainers.sft_data import SFTDataset, build_sft_dataset


def run_sft(cfg: SFTConfig, *, on_step_end: StepHook | None = None) -> list[float]:
    """Fine-tune per ``cfg``; returns the loss of every step this call ran."""
    # Tokenise first: a missing or empty file fails before the run folder is touched.
    dataset = build_sft_dataset(cfg.data, cfg.model_config().seq_length)

    def make_dataset(run: RunDir, model_cfg: ModelConfig) -> SFTDataset:
        return dataset

    return train(
        cfg,
        make_dataset,
        description="sft",
        tokenizer=cfg.data.tokenizer,
        on_step_end=on_step_end,
    )


def main(argv: list[str]) -> int:
    """Entry point of ``dsm train sft --config X.yaml [key=value ...]``."""
    return run_main("dsm train sft", SFTConfig, argv, run_sft)
