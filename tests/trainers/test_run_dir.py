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


def _engine_and_user_files(root):
    """A finished run's files plus a user's notes and analysis folder (issue 23, item 3)."""
    (root / "checkpoints" / "step_0000010").mkdir(parents=True)
    (root / "tensorboard").mkdir()
    (root / "tensorboard" / "events.out").write_text("x")
    (root / "metrics.jsonl").write_text("{}\n")
    (root / "loss.png").write_bytes(b"png")
    (root / "config.yaml").write_text("lr: 0.1\n")
    (root / "notes.txt").write_text("why this run matters\n")
    (root / "analysis").mkdir()
    (root / "analysis" / "table.csv").write_text("a,b\n")


def test_overwrite_deletes_only_what_the_engine_wrote(tmp_path, capsys):
    _engine_and_user_files(tmp_path)
    run = prepare_run_dir(tmp_path, Cfg(), overwrite=True, latest=_no_ckpt)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["analysis", "checkpoints", "config.yaml", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "why this run matters\n"
    assert (tmp_path / "analysis" / "table.csv").read_text() == "a,b\n"
    assert not any(run.checkpoints.iterdir())
    assert "kept analysis/, notes.txt" in capsys.readouterr().err


def test_restarting_a_run_that_saved_nothing_keeps_the_users_files(tmp_path):
    _engine_and_user_files(tmp_path)
    run = prepare_run_dir(tmp_path, Cfg(lr=0.2), resume="auto", latest=_no_ckpt)
    assert run.resume_from is None
    assert (tmp_path / "notes.txt").is_file() and (tmp_path / "analysis" / "table.csv").is_file()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_engine_entries_cover_every_writer():
    from dsm_engine.grpo.rm_refresh import RM_DIR
    from dsm_engine.grpo.trainer import REFERENCE_DIR
    from dsm_engine.plotting import PANELS
    from dsm_engine.trainers.run_dir import RUN_ENTRIES

    assert {f"{panel}.png" for panel in PANELS} | {RM_DIR, REFERENCE_DIR} <= RUN_ENTRIES


def test_the_tokenizer_of_the_run_is_kept_with_its_checkpoints(tmp_path, neox_tokenizer_path):
    from dsm_engine.models.hf_tokenizer import checkpoint_tokenizer

    run = prepare_run_dir(tmp_path, Cfg(), tokenizer=neox_tokenizer_path, latest=_no_ckpt)
    kept = checkpoint_tokenizer(run.checkpoints / "step_0000010")  # found from any step folder
    assert kept == run.checkpoints / "tokenizer"
    assert (kept / "tokenizer.json").read_bytes() != b""
    assert (kept / "tokenizer_config.json").is_file()  # special tokens for transformers
