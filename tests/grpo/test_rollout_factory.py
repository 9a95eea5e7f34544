"""The rollout factory lives apart from the types the engines import (no import cycle)."""

from __future__ import annotations

import pytest

from dsm_engine.config import ConfigError


def test_an_unknown_backend_is_a_config_error_naming_the_choices():
    from dsm_engine.rollout.factory import build_rollout_engine

    with pytest.raises(ConfigError, match="'hf' or 'vllm'"):
        build_rollout_engine("sglang", None)


def test_the_old_import_path_still_gives_the_factory_with_a_deprecation_warning():
    from dsm_engine.rollout import factory

    with pytest.warns(DeprecationWarning, match="dsm_engine.rollout.factory"):
        from dsm_engine.rollout.base import build_rollout_engine
    assert build_rollout_engine is factory.build_rollout_engine


def test_other_missing_names_of_base_still_raise_attribute_error():
    import dsm_engine.rollout.base as base

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        base.nope  # noqa: B018
