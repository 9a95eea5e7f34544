"""Pretraining trainer end to end on a tiny model and real GSM8K tokens (CPU)."""

from __future__ import annotations

import pytest
import yaml

from dsm_engine.trainers.pretrain import main
from tests.trainers.conftest import losses, pretrain_args, run_cli


def test_loss_goes_down_within_a_few_dozen_steps(corpus, tmp_path):
    run = tmp_path / "run"
    assert main(pretrain_args(corpus, run, "train.steps=24", "checkpoint.every=24")) == 0
    curve = losses(run)
    assert len(curve) == 24
    assert sum(curve[-4:]) / 4 < curve[0] - 1.5, curve
    # the run folder records the resolved config and a complete final checkpoint
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["vocab_size"] == 50304 and "preset" not in saved["model"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000024"


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2"])
def test_tp2_and_pp2_give_the_same_losses_as_tp1(corpus, init_checkpoint, tmp_path, layout):
    common = ("train.steps=5", f"checkpoint.load={init_checkpoint}", "checkpoint.every=100")
    assert main(pretrain_args(corpus, tmp_path / "tp1", *common)) == 0
    proc = run_cli(["train", "pretrain", *pretrain_args(corpus, tmp_path / "par", *common, layout)],
                   nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, par = losses(tmp_path / "tp1"), losses(tmp_path / "par")
    assert len(ref) == len(par) == 5
    assert par == pytest.approx(ref, rel=1e-5, abs=1e-5)
