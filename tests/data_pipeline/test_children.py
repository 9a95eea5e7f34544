"""Children of the data commands die with their parent, even one killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")


def _start(script: str, tmp_path, *args) -> subprocess.Popen:
    path = tmp_path / "parent.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen([sys.executable, "-P", str(path), *map(str, args)])


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _kill_parent_and_check_children_die(parent: subprocess.Popen, children: list) -> None:
    try:
        os.kill(parent.pid, signal.SIGKILL)  # the parent alone: not its process group
        parent.wait()
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [c.cmdline() for c in alive]
    finally:
        for child in children:  # never leave them running, whatever the outcome
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_killed_parent_takes_its_fasttext_trainer_with_it(tmp_path):
    parent = _start(
        """
        import sys
        from dsm_engine.data_pipeline.classifier import ClassifierConfig, train_classifier

        pos = [f"\\\\frac{{{i}}}{{2}} + x^2 = {i} solve for x" for i in range(300)]
        neg = [f"the weather in the park is nice on day {i}" for i in range(300)]
        cfg = ClassifierConfig(dim=8, epoch=10**6, bucket=1000, min_count=1)  # trains for minutes
        train_classifier(pos, neg, sys.argv[1], cfg)
        """,
        tmp_path,
        tmp_path / "model.bin",
    )

    def trainers():
        try:
            kids = psutil.Process(parent.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if "_ft_train" in " ".join(k.cmdline())]

    _wait_for(lambda: trainers() or parent.poll() is not None)
    kids = trainers()
    time.sleep(1.0)  # well into training, past the child's start-up
    _kill_parent_and_check_children_die(parent, kids)
    assert not (tmp_path / "model.bin").exists()


def test_killed_parent_takes_its_stage_workers_with_it(tmp_path):
    parent = _start(
        """
        import sys, time
        from pathlib import Path
        from datatrove.pipeline.base import PipelineStep
        from dsm_engine.data_pipeline.executors import ExecutorConfig, run_stage

        class Busy(PipelineStep):
            name = "busy"

            def __init__(self, folder):
                super().__init__()
                self.folder = folder

            def run(self, data, rank=0, world_size=1):
                Path(self.folder, f"started_{rank}").touch()
                time.sleep(600)
                yield from ()

        if __name__ == "__main__":
            cfg = ExecutorConfig(workers=2)
            run_stage("busy", [Busy(sys.argv[1])], tasks=2, logging_dir=sys.argv[2], cfg=cfg)
        """,
        tmp_path,
        tmp_path,
        tmp_path / "logs",
    )
    _wait_for(lambda: all((tmp_path / f"started_{r}").exists() for r in (0, 1)))
    descendants = psutil.Process(parent.pid).children(recursive=True)
    workers = [p for p in descendants if p.status() != psutil.STATUS_ZOMBIE]
    assert len(workers) >= 2
    _kill_parent_and_check_children_die(parent, workers)
