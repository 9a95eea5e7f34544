"""The training session every trainer runs in: resume restores the RNG states and the trainer's
own state, checkpoints follow the cadence, metrics are logged, and the run folder is unlocked
even when a step raises."""

from __future__ import annotations

import json
import random

import pytest
import torch

from dsm_engine.trainers.config import CheckpointConfig, LoggingConfig, RunConfig
from dsm_engine.trainers.profiling import StepWork
from dsm_engine.trainers.run_dir import RunDirError, prepare_run_dir
from dsm_engine.trainers.session import (
    CheckpointHooks,
    SessionOptions,
    StepResult,
    TrainingSession,
)

STEPS = 5


class _Crash(Exception):
    pass


def _cfg(run_dir, **over) -> RunConfig:
    return RunConfig(
        run_dir=str(run_dir),
        model={"preset": "tiny"},
        checkpoint=CheckpointConfig(every=2),
        logging=LoggingConfig(every=2, tensorboard=False, progress=False),
        **over,
    )


def _run(cfg: RunConfig, *, crash_at: int | None = None, seed: int = 0, keep=None) -> dict:
    """A session whose steps draw from the global RNGs, update the model and count in the
    trainer's own state (appended to ``keep``, which keeps it alive)."""
    from dsm_engine.models.build import build_model

    seen: dict = {"draws": [], "ended": [], "restored": None, "count": 0}

    def restore(extra: dict) -> None:
        seen["restored"] = seen["count"] = extra["count"]

    hooks = CheckpointHooks(state=lambda done: {"count": seen["count"]}, restore=restore)

    def step_fn(step: int) -> StepResult:
        if step == crash_at:
            raise _Crash(step)
        seen["draws"].append((step, float(torch.rand(())), random.random()))
        session.zero_grad()  # a real update, so the optimizer has state to checkpoint
        sum((p.float() ** 2).sum() for p in session.chunks[0].parameters()).backward()
        session.opt.step()
        seen["count"] += 1
        return StepResult({"loss": float(step)}, StepWork(train_tokens=1.0, train_flops=1.0))

    session = TrainingSession(cfg, SessionOptions(total_steps=STEPS, description="spec"))
    if keep is not None:
        keep.append(session)
    torch.manual_seed(seed)
    random.seed(seed)
    with session:
        session.build(lambda ctx: [build_model(cfg.model_config(), ctx)])
        seen["start"] = session.resume(hooks)
        seen["saves"] = [d for d in range(1, STEPS + 1) if session.should_save(d)]
        seen["history"] = session.drive(step_fn, lambda d, m: seen["ended"].append(d))
    return seen


def test_a_resumed_session_draws_what_an_uninterrupted_one_would(tmp_path):
    from dsm_engine.models.parallel import destroy_parallel

    try:
        straight = _run(_cfg(tmp_path / "straight"))
        with pytest.raises(_Crash):
            _run(_cfg(tmp_path / "crashed"), crash_at=3)
        # Another seed: only the checkpoint's RNG states can give the same draws again.
        resumed = _run(_cfg(tmp_path / "crashed", resume="auto"), seed=99)
    finally:
        destroy_parallel()

    assert straight["saves"] == [2, 4, 5]  # every checkpoint.every steps and the last
    assert straight["ended"] == [1, 2, 3, 4, 5]
    assert [m["loss"] for m in straight["history"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [2, 4, 5]  # every logging.every steps and the last
    assert [r["loss"] for r in rows] == [1.0, 3.0, 4.0]

    ckpts = sorted(p.name for p in (tmp_path / "straight" / "checkpoints").glob("step_*"))
    assert ckpts == ["step_0000002", "step_0000004", "step_0000005"]

    # The crash in step 4 left the checkpoint of step 2; the resumed run starts there, with
    # the trainer's state of then and the RNG states of then.
    assert resumed["start"] == 2 and resumed["restored"] == 2
    assert resumed["draws"] == straight["draws"][2:]
    assert resumed["ended"] == [3, 4, 5]


def test_the_run_folder_is_unlocked_when_a_step_raises(tmp_path):
    from dsm_engine.models.parallel import destroy_parallel

    alive: list = []  # a lock dropped only because its session was collected would not count
    try:
        with pytest.raises(_Crash):
            _run(_cfg(tmp_path / "run"), crash_at=0, keep=alive)
    finally:
        destroy_parallel()
    # The crashed run's folder can be taken again (a held lock would refuse it).
    run = prepare_run_dir(tmp_path / "run", _cfg(tmp_path / "run"), overwrite=True)
    run.release()


def test_a_refused_run_folder_fails_before_any_step(tmp_path):
    from dsm_engine.models.parallel import destroy_parallel

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("someone else's file\n")
    try:
        with pytest.raises(RunDirError):
            _run(_cfg(tmp_path / "run"))
    finally:
        destroy_parallel()
