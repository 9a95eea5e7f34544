"""Pretraining trainer end to end on a tiny model and real GSM8K tokens (CPU)."""

from __future__ import annotations

import pytest
import yaml
from trainers_testlib import losses, pretrain_args, run_cli

from dsm_engine.trainers.pretrain import main


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


def _same_start(init_checkpoint) -> tuple[str, ...]:
    return ("train.steps=5", f"checkpoint.load={init_checkpoint}", "checkpoint.every=100")


@pytest.fixture(scope="module")
def tp1_losses(corpus, init_checkpoint, tmp_path_factory) -> list[float]:
    run = tmp_path_factory.mktemp("tp1") / "run"
    assert main(pretrain_args(corpus, run, *_same_start(init_checkpoint))) == 0
    return losses(run)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2", "parallel.dp=2"])
def test_tp2_pp2_and_dp2_give_the_same_losses_as_tp1(
    corpus, init_checkpoint, tp1_losses, tmp_path, layout
):
    args = pretrain_args(corpus, tmp_path / "par", *_same_start(init_checkpoint), layout)
    proc = run_cli(["train", "pretrain", *args], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, par = tp1_losses, losses(tmp_path / "par")
    assert len(ref) == len(par) == 5
    assert par == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_activation_recomputation_gives_the_same_losses(corpus, init_checkpoint, tmp_path):
    common = ("train.steps=3", f"checkpoint.load={init_checkpoint}", "checkpoint.every=100")
    assert main(pretrain_args(corpus, tmp_path / "plain", *common)) == 0
    assert main(pretrain_args(corpus, tmp_path / "recompute", *common, "train.recompute=full")) == 0
    assert losses(tmp_path / "recompute") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)
