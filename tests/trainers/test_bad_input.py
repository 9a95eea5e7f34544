"""Bad input gives a clear error and leaves existing runs alone."""

from __future__ import annotations

from trainers_testlib import pretrain_args, write_indexed

from dsm_engine.trainers.pretrain import main
from dsm_engine.trainers.sft import main as sft_main


def test_unknown_config_key_is_named_and_nothing_is_written(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(pretrain_args(corpus, run, "optim.betas=0.9")) == 2
    assert "optim.betas" in capsys.readouterr().err
    assert not run.exists()


def test_wrong_type_is_named(corpus, tmp_path, capsys):
    assert main(pretrain_args(corpus, tmp_path / "run", "train.steps=many")) == 2
    assert "train.steps" in capsys.readouterr().err


def test_missing_data_file_is_named(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = pretrain_args(corpus, run) + [
        f"data.paths=[{tmp_path / 'missing'}]",
        "data.weights=null",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data.paths[0]" in err and "missing.bin" in err
    assert not run.exists()


def test_empty_dataset_is_an_error(corpus, tmp_path, capsys, neox_tokenizer_path):
    empty = write_indexed(tmp_path / "empty", [], neox_tokenizer_path)
    args = pretrain_args(corpus, tmp_path / "run") + [f"data.paths=[{empty}]", "data.weights=null"]
    assert main(args) == 2
    assert "empty dataset" in capsys.readouterr().err


def test_existing_run_is_not_overwritten_unless_asked(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("precious: true\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert main(pretrain_args(corpus, run, "train.steps=1")) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "precious: true\n"
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def test_empty_sft_file_is_an_error(tmp_path, capsys, neox_tokenizer_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    args = [
        f"data.path={empty}",
        f"data.tokenizer={neox_tokenizer_path}",
        f"run_dir={tmp_path / 'r'}",
    ]
    assert sft_main(args) == 2
    assert "empty dataset" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_sft_file_is_named(tmp_path, capsys, neox_tokenizer_path):
    args = [f"data.path={tmp_path / 'nope.jsonl'}", f"data.tokenizer={neox_tokenizer_path}"]
    assert sft_main(args + [f"run_dir={tmp_path / 'r'}"]) == 2
    assert "data.path" in capsys.readouterr().err
