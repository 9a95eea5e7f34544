"""The config system: YAML plus key=value overrides into typed dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from dsm_engine.config import ConfigError, load_config, save_config, split_config_args


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    schedule: Literal["cosine", "multistep"] = "cosine"
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 1e-4\n")
    cfg = load_config(Run, path, ["optim.betas=[0.8, 0.9]", "schedule=multistep", "resume=auto"])
    assert cfg.steps == 5 and cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.schedule == "multistep" and cfg.resume == "auto"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(Run, None, ["optim.lrr=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="steps"):
        load_config(Run, None, ["steps=ten"])
    with pytest.raises(ConfigError, match="schedule"):
        load_config(Run, None, ["schedule=linear"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Run, tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Run, None, ["optim.lr=0.5", "name=x"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Run, tmp_path / "resolved.yaml") == cfg


def test_split_config_args():
    config, overrides, rest = split_config_args(["--config", "a.yaml", "x=1", "--flag", "y.z=2"])
    assert config == "a.yaml" and overrides == ["x=1", "y.z=2"] and rest == ["--flag"]


def test_help_lists_every_key_with_its_type_and_default_as_loadable_yaml():
    import yaml

    from dsm_engine.config import describe_config, to_dict

    text = describe_config(Run)
    lines = text.splitlines()
    assert lines[0].split() == ["name:", "run", "#", "str"]
    assert lines[2].split() == ["schedule:", "cosine", "#", "cosine", "|", "multistep"]
    assert lines[3].split() == ["resume:", "null", "#", "str", "|", "null"]
    assert lines[4] == "optim:"  # a section; Optim has no docstring to summarise
    assert lines[6].startswith("  betas: [0.9, 0.95]") and lines[6].endswith(
        "# tuple[float, float]"
    )
    assert lines[5].startswith("  lr: 0.001")
    assert yaml.safe_load(text) == to_dict(Run())  # the help is a config file of the defaults
