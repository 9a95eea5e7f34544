"""Pretraining data: megatron-core indexed datasets blended by weight, read in a fixed order.

The ``.bin``/``.idx`` shards (written by ``dsm data tokenize`` or megatron's
``IndexedDatasetBuilder``) are blended with ``BlendedMegatronDatasetBuilder`` into GPTDataset
samples of ``seq_length + 1`` tokens (the model's sequence length). megatron-core shuffles documents and samples from
``seed`` and caches the index arrays, so sample ``i`` is the same on every run, rank and resume.

The data position is simply the number of consumed samples, ``step * global_batch_size``:
``global_batch(dataset, step, ...)`` returns this rank's microbatches for ``step`` with no
iterator state to save.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm_engine.config import ConfigError


@dataclass
class DataConfig:
    """Blend of indexed datasets. ``paths`` are prefixes (``x`` for ``x.bin``/``x.idx``);
    ``weights`` (optional, one per path) are the sampling proportions, normalised. ``tokenizer``:
    the ``tokenizer.json`` the shards were written with (exports of the run carry it)."""

    paths: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    seed: int = 1234
    eod_token_id: int = 0
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    cache_dir: str | None = None  # default: <run_dir>/data_cache
    tokenizer: str | None = None  # default: the one saved with checkpoint.load, if any


class _TokenIds:
    """The few tokenizer facts GPTDataset needs for pre-tokenised data (no text is encoded)."""

    def __init__(self, vocab_size: int, eod: int) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.unique_identifiers = {"class": "_TokenIds", "vocab_size": vocab_size, "eod": eod}


def _prefix(path: str) -> str:
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def check_blend(cfg: DataConfig) -> list[str]:
    """Validate ``cfg`` and return the dataset prefixes; errors name the field and the file."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if not cfg.paths:
        raise ConfigError("data.paths: no dataset given (list .bin/.idx prefixes)")
    if cfg.weights is not None:
        if len(cfg.weights) != len(cfg.paths):
            raise ConfigError(
                f"data.weights has {len(cfg.weights)} entries for {len(cfg.paths)} data.paths"
            )
        if any(w < 0 for w in cfg.weights) or sum(cfg.weights) <= 0:
            raise ConfigError(f"data.weights must be >= 0 with a positive sum: {cfg.weights}")
    prefixes = []
    for i, path in enumerate(cfg.paths):
        prefix = _prefix(path)
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise FileNotFoundError(f"data.paths[{i}]: {prefix + suffix} does not exist")
        empty = ValueError(f"data.paths[{i}]: {prefix} holds no tokens (empty dataset)")
        if Path(prefix + ".bin").stat().st_size == 0:
            raise empty  # numpy cannot memory-map an empty file
        ds = IndexedDataset(prefix, mmap=True)
        if len(ds) == 0 or int(np.sum(ds.sequence_lengths)) == 0:
            raise empty
        prefixes.append(prefix)
    return prefixes


def build_pretrain_dataset(
    cfg: DataConfig, *, seq_length: int, num_samples: int, vocab_size: int, cache_dir: str | Path
) -> Any:
    """The blended training dataset with at least ``num_samples`` samples of ``seq_length``.

    Each item is a dict of int64 ``tokens``/``labels`` (seq_length), float ``loss_mask``, int64
    ``position_ids`` and, with ``reset_attention_mask``, a bool ``attention_mask`` (1, T, T).
    Call on every rank (megatron-core builds on rank 0 first, then the others read the cache).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes = check_blend(cfg)
    weights = None if cfg.weights is None else [float(w) for w in cfg.weights]
    ds_cfg = GPTDatasetConfig(
        random_seed=cfg.seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split="1,0,0",
        path_to_cache=str(cache_dir),
        tokenizer=_TokenIds(vocab_size, cfg.eod_token_id),
        reset_position_ids=cfg.reset_position_ids,
        reset_attention_mask=cfg.reset_attention_mask,
        eod_mask_loss=cfg.eod_mask_loss,
        create_attention_mask=cfg.reset_attention_mask,
        mid_level_dataset_surplus=0.05,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [num_samples, 0, 0], lambda: True, ds_cfg
    ).build()
    if train is None or len(train) == 0:
        raise ValueError(
            f"data.paths: the blend {prefixes} yields no samples of {seq_length} tokens"
        )
    return train


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch; a per-sample (1, T, T) attention mask becomes (B, 1, T, T)."""
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def global_batch(
    dataset: Any,
    step: int,
    *,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
) -> list[dict[str, torch.Tensor]]:
    """This data-parallel rank's microbatches of optimizer step ``step`` (0-based).

    Step ``s`` reads samples ``[s * G, (s + 1) * G)`` of ``dataset`` (which must be that long,
    or accept any index, like the SFT dataset); DP rank ``r`` takes the ``r``-th contiguous ``G / dp_size`` of them, cut into microbatches.
    """
    if global_batch_size % (micro_batch_size * dp_size):
        raise ConfigError(
            f"train.global_batch_size ({global_batch_size}) must be a multiple of "
            f"train.micro_batch_size ({micro_batch_size}) x data-parallel size ({dp_size})"
        )
    local = global_batch_size // dp_size
    start = step * global_batch_size + dp_rank * local
    items = [dataset[start + i] for i in range(local)]
    return [collate(items[i : i + micro_batch_size]) for i in range(0, local, micro_batch_size)]
