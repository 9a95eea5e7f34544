"""``dsm train * --help`` lists every config section and key with its type and default, generated
from the config dataclasses (issue 23, item 4)."""

from __future__ import annotations

import pytest
import yaml

from dsm_engine.cli import main
from dsm_engine.config import to_dict


def _config_class(command: str) -> type:
    from dsm_engine.grpo.config import GRPOConfig
    from dsm_engine.trainers.config import PretrainConfig, SFTConfig
    from dsm_engine.trainers.reward_model import RewardModelConfig

    return {
        "pretrain": PretrainConfig,
        "sft": SFTConfig,
        "grpo": GRPOConfig,
        "rm": RewardModelConfig,
    }[command]


@pytest.mark.parametrize("command", ["pretrain", "sft", "grpo", "rm"])
def test_help_lists_sections_keys_types_and_defaults(command, capsys):
    assert main(["train", command, "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "  tp: 1                                   # int" in lines
    assert "resume: never                             # never | auto" in lines
    assert any(line.startswith("  load: null") and line.endswith("# str | null") for line in lines)
    keys = out[out.index("run_dir:") : out.index("\nmodel: {preset: NAME}")]
    defaults = to_dict(_config_class(command)())
    if command != "grpo":  # grpo's long prompt template is shortened in the help
        assert yaml.safe_load(keys) == defaults
    for section, fields in defaults.items():
        assert any(line.startswith(f"{section}:") for line in lines), section
        if isinstance(fields, dict) and section != "model":
            for key in fields:
                assert any(line.startswith(f"  {key}: ") for line in lines), f"{section}.{key}"
