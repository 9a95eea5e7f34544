"""Distributed state exists only where a session or command asks for it."""

from __future__ import annotations

import pytest

from dsm_engine.models.parallel import (
    ParallelConfig,
    current_context,
    destroy_parallel,
    initialize_parallel,
    parallel_session,
)


@pytest.fixture(autouse=True)
def _no_context():
    destroy_parallel()  # whatever an earlier test left
    yield
    destroy_parallel()


def test_a_session_sets_up_a_context_for_its_block_only():
    import torch.distributed as dist

    with parallel_session(seed=3) as ctx:
        assert current_context() is ctx and ctx.tp_size == ctx.pp_size == 1
        assert dist.is_initialized()
    assert current_context() is None
    assert not dist.is_initialized()  # the session created the process group, so it went too


def test_a_session_inside_a_same_layout_context_leaves_it_in_place():
    outer = initialize_parallel(ParallelConfig())
    with parallel_session() as ctx:
        assert ctx is outer
    assert current_context() is outer


def test_a_session_refuses_to_replace_a_context_of_another_layout():
    outer = initialize_parallel(ParallelConfig())
    sp = ParallelConfig(sequence_parallel=True)
    with pytest.raises(RuntimeError, match="another layout"), parallel_session(sp):
        pass
    assert current_context() is outer


def test_loading_a_model_without_a_context_raises_and_creates_none(tmp_path):
    from dsm_engine.models.pretrained import from_pretrained

    with pytest.raises(RuntimeError, match="from_pretrained.*parallel_session"):
        from_pretrained(tmp_path)
    assert current_context() is None


def test_loading_a_reward_model_without_a_context_raises_and_creates_none(tmp_path):
    from dsm_engine.reward_models.scorer import load_reward_fn

    with pytest.raises(RuntimeError, match="load_reward_fn.*parallel_session"):
        load_reward_fn("orm", str(tmp_path), str(tmp_path))
    assert current_context() is None
