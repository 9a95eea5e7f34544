"""A pretraining run that SIGKILLs itself after step ``--kill-at`` (for the resume test)."""

from __future__ import annotations

import os
import signal
import sys

from dsm_engine.trainers.config import PretrainConfig, load_run_config
from dsm_engine.trainers.pretrain import run_pretrain


def _kill_at(step: int):
    def hook(done: int, metrics: dict) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    kill_at = int(sys.argv[1])
    cfg, _ = load_run_config(PretrainConfig, sys.argv[2:])
    run_pretrain(cfg, on_step_end=_kill_at(kill_at))
