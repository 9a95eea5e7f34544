"""The rollout factory lives apart from the types the engines import (no import cycle)."""

from __future__ import annotations

import pytest

from dsm_engine.config import ConfigError


def test_an_unknown_backend_is_a_config_error_naming_the_choices():
    from dsm_engine.rollout.factory import build_rollout_engine

    with pytest.raises(ConfigError, match="'hf' or 'vllm'"):
        build_rollout_engine("sglang", None)
