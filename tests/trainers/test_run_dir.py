"""Run folder rules: fresh, refuse, overwrite, resume from the latest complete checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from dsm_engine.trainers.run_dir import RunDirError, decide, prepare_run_dir


@dataclass
class Cfg:
    lr: float = 0.1


def _no_ckpt(root):
    return None


def test_fresh_folder_gets_the_resolved_config(tmp_path):
    run = prepare_run_dir(tmp_path / "run", Cfg(lr=0.5), latest=_no_ckpt)
    assert run.resume_from is None
    assert yaml.safe_load(run.config_file.read_text()) == {"lr": 0.5}
    assert run.checkpoints.is_dir()


def test_existing_run_is_refused_and_untouched(tmp_path):
    (tmp_path / "config.yaml").write_text("old\n")
    with pytest.raises(RunDirError, match="overwrite=true"):
        prepare_run_dir(tmp_path, Cfg(), latest=_no_ckpt)
    assert (tmp_path / "config.yaml").read_text() == "old\n"


def test_overwrite_clears_the_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints" / "step_1").mkdir(parents=True)
    run = prepare_run_dir(tmp_path, Cfg(), overwrite=True, latest=_no_ckpt)
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml"]
    assert not any(run.checkpoints.iterdir())


def test_resume_auto_picks_the_latest_complete_checkpoint(tmp_path):
    from dsm_engine.models.checkpoint import META

    for step, complete in ((10, True), (20, True), (30, False)):
        d = tmp_path / "checkpoints" / f"step_{step:07d}"
        d.mkdir(parents=True)
        if complete:
            (d / META).write_text("{}")
    (tmp_path / "config.yaml").write_text("old\n")
    action, ckpt = decide(tmp_path, overwrite=False, resume="auto")
    assert action == "resume" and ckpt.name == "step_0000020"


def test_resume_auto_without_checkpoint_restarts_only_our_own_runs(tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's file\n")
    with pytest.raises(RunDirError):
        decide(tmp_path, overwrite=False, resume="auto", latest=_no_ckpt)
    (tmp_path / "config.yaml").write_text("ours\n")
    assert decide(tmp_path, overwrite=False, resume="auto", latest=_no_ckpt) == ("clear", None)


def test_a_file_is_not_a_run_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        decide(f, overwrite=True, resume="never", latest=_no_ckpt)
