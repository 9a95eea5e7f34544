"""Pretraining data: blended indexed datasets, deterministic order, clear input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsm_engine.config import ConfigError
from dsm_engine.trainers.data import DataConfig, build_pretrain_dataset, check_blend, global_batch


@pytest.fixture
def group():
    from dsm_engine.models.parallel import destroy_parallel, initialize_parallel

    ctx = initialize_parallel()
    yield ctx
    destroy_parallel()


def _build(corpus, cache, weights=(0.7, 0.3), seed=7, n=400):
    cfg = DataConfig(
        paths=[str(corpus["qa"]), str(corpus["answers"])], weights=list(weights), seed=seed
    )
    return build_pretrain_dataset(
        cfg, seq_length=32, num_samples=n, vocab_size=50304, cache_dir=cache
    )


def test_same_seed_gives_the_same_sample_order(group, corpus, tmp_path):
    a = _build(corpus, tmp_path / "a")
    b = _build(corpus, tmp_path / "b")
    for i in (0, 1, 17, 399):
        assert torch.equal(torch.as_tensor(a[i]["tokens"]), torch.as_tensor(b[i]["tokens"]))
    c = _build(corpus, tmp_path / "c", seed=8)
    assert not all(
        torch.equal(torch.as_tensor(a[i]["tokens"]), torch.as_tensor(c[i]["tokens"]))
        for i in range(8)
    )


def test_blend_follows_the_weights(group, corpus, tmp_path):
    ds = _build(corpus, tmp_path, weights=(0.8, 0.2), n=1000)
    ids = np.array([int(ds[i]["dataset_id"]) for i in range(1000)])
    assert abs((ids == 0).mean() - 0.8) < 0.02


def test_samples_are_shifted_next_token_pairs(group, corpus, tmp_path):
    ds = _build(corpus, tmp_path)
    item = ds[5]
    assert item["tokens"].shape == (32,) and item["labels"].shape == (32,)
    assert torch.equal(item["tokens"][1:], item["labels"][:-1])


def test_global_batch_splits_data_parallel_ranks_and_microbatches(group, corpus, tmp_path):
    ds = _build(corpus, tmp_path)
    whole = global_batch(ds, 3, global_batch_size=8, micro_batch_size=2, dp_rank=0, dp_size=1)
    r0 = global_batch(ds, 3, global_batch_size=8, micro_batch_size=2, dp_rank=0, dp_size=2)
    r1 = global_batch(ds, 3, global_batch_size=8, micro_batch_size=2, dp_rank=1, dp_size=2)
    assert len(whole) == 4 and len(r0) == len(r1) == 2
    assert torch.equal(
        torch.cat([mb["tokens"] for mb in r0 + r1]), torch.cat([mb["tokens"] for mb in whole])
    )
    with pytest.raises(ConfigError, match="global_batch_size"):
        global_batch(ds, 0, global_batch_size=6, micro_batch_size=4, dp_rank=0, dp_size=1)


def test_missing_data_file_is_named(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match=r"data.paths\[1\].*nope.bin"):
        check_blend(DataConfig(paths=[str(corpus["qa"]), str(tmp_path / "nope")]))


def test_empty_dataset_is_an_error(tmp_path, neox_tokenizer_path):
    from trainers_testlib import write_indexed

    empty = write_indexed(tmp_path / "empty", [], neox_tokenizer_path)
    with pytest.raises(ValueError, match="empty dataset"):
        check_blend(DataConfig(paths=[str(empty)]))


def test_weights_must_match_paths(corpus):
    with pytest.raises(ConfigError, match="data.weights"):
        check_blend(DataConfig(paths=[str(corpus["qa"])], weights=[0.5, 0.5]))
