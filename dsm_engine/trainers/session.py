"""One training session: the shell every trainer (pretrain, SFT, reward model, GRPO) runs in.

A trainer says what to build and what one step does; the session owns the rest::

    session = TrainingSession(cfg, SessionOptions(total_steps=cfg.train.steps, description="sft"))
    # session.ctx: parallel state is set up (cfg.parallel, cfg.train.seed); nothing on disk yet
    with session:                                  # the run folder: prepared, locked
        session.build(lambda ctx: [build_model(model_cfg, ctx)])   # wrapped + optimizer
        session.resume(CheckpointHooks(...))       # or a fresh start; logger and profiler open
        history = session.drive(step_fn, on_step_end)
    # the folder is unlocked, logger and profiler closed, also when a step raised

``drive`` runs steps ``start..total``: ``step_fn(step)`` (0-based) returns the step's metrics
and work; the session saves at the cadence (``checkpoint.every`` and the last step), adds the
profiler's metrics, logs (every ``logging.every`` steps and the last) and calls
``on_step_end(done, metrics)``.

Checkpoints: the model and optimizer (``checkpoints/``) with ``extra = {"step", "rng", ...}``,
where ``rng`` is every rank's RNG states and the rest is the trainer's own state
(:class:`CheckpointHooks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from dsm_engine.models.parallel import ParallelContext
from dsm_engine.trainers.config import RunConfig
from dsm_engine.trainers.metrics import MetricsLogger
from dsm_engine.trainers.optim import wrap_and_build_optimizer
from dsm_engine.trainers.profiling import StepProfiler, StepWork, true_peak_gib
from dsm_engine.trainers.rng import rng_states, set_rng_states
from dsm_engine.trainers.run_dir import RunDir, prepare_run_dir

StepHook = Callable[[int, dict[str, float]], None]
ModelBuilder = Callable[[ParallelContext], list[torch.nn.Module]]


@dataclass
class SessionOptions:
    """How a trainer's session runs.

    total_steps: the run's length (steps ``0..total_steps - 1``).
    description: the progress bar's label.
    tokenizer: the tokenizer kept with the checkpoints (exports carry it).
    show: metric names beside the progress bar (None: the logger's default).
    log_every_step: log every step instead of every ``logging.every`` (GRPO).
    mean_profile_over_dp: average the profiler's metrics over data-parallel ranks (GRPO, whose
        ranks sample different responses).
    """

    total_steps: int
    description: str
    tokenizer: str | None = None
    show: tuple[str, ...] | None = None
    log_every_step: bool = False
    mean_profile_over_dp: bool = False


@dataclass
class CheckpointHooks:
    """The trainer's own part of its checkpoints.

    state(done): keys saved in ``extra`` beside ``step`` and ``rng``.
    restore(extra): called on resume with the checkpoint's ``extra`` (model and optimizer are
        loaded; the RNG states are set after it, so the next step draws what it would have).
    fresh(): a fresh start (None: load ``checkpoint.load``, if set, into the model).
    save_more(done): saves beside the model's checkpoint, before it (GRPO's reference).
    """

    state: Callable[[int], dict[str, Any]] = field(default=lambda done: {})
    restore: Callable[[dict[str, Any]], None] = field(default=lambda extra: None)
    fresh: Callable[[], None] | None = None
    save_more: Callable[[int], None] | None = None


@dataclass
class StepResult:
    """What one step reports: its metrics and the work it did (for the profiler)."""

    metrics: dict[str, float]
    work: StepWork


StepFn = Callable[[int], StepResult]


def dp_mean(values: dict[str, float], group: Any) -> dict[str, float]:
    """The mean of each value over the ranks of ``group`` (collective)."""
    if dist.get_world_size(group) == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    t /= dist.get_world_size(group)
    return dict(zip(keys, t.tolist()))


class TrainingSession:
    """Parallel state, run folder, wrapped model + optimizer, resume, logger, profiler,
    checkpoint cadence and the step loop of one training run (see the module docstring)."""

    def __init__(self, cfg: RunConfig, opts: SessionOptions) -> None:
        from dsm_engine.models.parallel import initialize_parallel

        self.cfg = cfg
        self.opts = opts
        self.ctx: ParallelContext = initialize_parallel(cfg.parallel, seed=cfg.train.seed)
        self.start_step = 0
        self.chunks: list[torch.nn.Module] = []
        self.opt: Any = None
        self.zero_grad: Callable[[], None] = lambda: None
        self._hooks = CheckpointHooks()
        self._run: RunDir | None = None
        self._log: MetricsLogger | None = None
        self._prof: StepProfiler | None = None
        self._stack = contextlib.ExitStack()

    # -- the run's resources ------------------------------------------------------------------

    def __enter__(self) -> TrainingSession:
        """Prepare and lock the run folder (a refused folder raises here, on every rank)."""
        c = self.cfg
        run = prepare_run_dir(
            c.run_dir, c, overwrite=c.overwrite, resume=c.resume, tokenizer=self.opts.tokenizer
        )
        self._run = self._stack.enter_context(run)  # the folder stays locked until exit
        return self

    def __exit__(self, *exc: object) -> None:
        """Close what the run opened, last first: profiler, logger, then the folder's lock."""
        self._stack.close()

    def keep(self, resource: contextlib.AbstractContextManager) -> Any:
        """Enter ``resource`` and exit it when the session ends (the latest kept exits first:
        a resource kept after :meth:`resume` closes before the profiler and logger)."""
        return self._stack.enter_context(resource)

    @property
    def run(self) -> RunDir:
        if self._run is None:
            raise RuntimeError("the run folder is prepared by `with session:`")
        return self._run

    @property
    def log(self) -> MetricsLogger:
        if self._log is None:
            raise RuntimeError("the metrics logger opens in session.resume()")
        return self._log

    @property
    def prof(self) -> StepProfiler:
        if self._prof is None:
            raise RuntimeError("the profiler opens in session.resume()")
        return self._prof

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """The profiler's timer for phase ``name`` of the current step."""
        return self.prof.phase(name)

    # -- model, resume, checkpoints -----------------------------------------------------------

    @property
    def model(self) -> Any:
        """The trained model as the checkpoint layer takes it: one module, or the chunk list."""
        return self.chunks[0] if len(self.chunks) == 1 else self.chunks

    def build(self, builder: ModelBuilder) -> list[torch.nn.Module]:
        """Build the trained model's chunks with ``builder(ctx)``, wrap them and build the
        optimizer (``cfg.optim``); returns the wrapped chunks."""
        bf16 = self.cfg.model_config().params_dtype == "bfloat16"
        chunks = builder(self.ctx)
        self.chunks, self.opt, self.zero_grad = wrap_and_build_optimizer(
            chunks, self.cfg.optim, bf16=bf16
        )
        return self.chunks

    def resume(self, hooks: CheckpointHooks | None = None) -> int:
        """Continue from the run folder's checkpoint (model, optimizer, the trainer's state,
        RNG states) or start fresh; open the logger and profiler. Returns the start step."""
        from dsm_engine.models.checkpoint import load_checkpoint

        self._hooks = hooks or CheckpointHooks()
        if self.run.resume_from is not None:
            extra = load_checkpoint(self.run.resume_from, self.model, optimizer=self.opt)
            self.start_step = int(extra["step"])
            self._hooks.restore(extra)
            set_rng_states(extra["rng"])
        elif self._hooks.fresh is not None:
            self._hooks.fresh()
        elif self.cfg.checkpoint.load:
            load_checkpoint(self.cfg.checkpoint.load, self.model)
        c, o = self.cfg, self.opts
        self._log = self.keep(
            MetricsLogger(
                self.run.path,
                total_steps=o.total_steps,
                start_step=self.start_step,
                enabled=self.ctx.rank == 0,
                tensorboard=c.logging.tensorboard,
                progress=c.logging.progress,
                description=o.description,
                **({"show": o.show} if o.show is not None else {}),
            )
        )
        self._prof = self.keep(
            StepProfiler(
                c.profile,
                run_dir=self.run.path,
                device=self.ctx.device,
                rank=self.ctx.rank,
                start_step=self.start_step,
            )
        )
        return self.start_step

    def should_save(self, done: int) -> bool:
        """Whether a checkpoint follows step ``done`` (1-based): every ``checkpoint.every``
        steps and after the last."""
        return done % self.cfg.checkpoint.every == 0 or done == self.opts.total_steps

    def save(self, done: int) -> None:
        """Checkpoint the run after step ``done``: the trainer's extra saves, then the model and
        optimizer with ``{"step", "rng", **hooks.state(done)}``."""
        from dsm_engine.models.checkpoint import save_checkpoint

        extra = {"step": done, "rng": rng_states(), **self._hooks.state(done)}
        if self._hooks.save_more is not None:
            self._hooks.save_more(done)
        save_checkpoint(self.run.checkpoints, done, self.model, optimizer=self.opt, extra=extra)

    # -- the step loop ------------------------------------------------------------------------

    def drive(self, step_fn: StepFn, on_step_end: StepHook | None = None) -> list[dict[str, float]]:
        """Run the remaining steps; returns every step's metrics."""
        history = []
        for step in range(self.start_step, self.opts.total_steps):
            done = step + 1
            self.prof.begin_step(done)
            result = step_fn(step)
            if self.should_save(done):
                with self.phase("checkpoint"):
                    self.save(done)
            metrics = result.metrics
            prof = self.prof.end_step(result.work, num_devices=self.ctx.world_size)
            metrics.update(
                dp_mean(prof, self.ctx.dp_group) if self.opts.mean_profile_over_dp else prof
            )
            if "mem_gib" in metrics and (peak := true_peak_gib(metrics)) is not None:
                metrics["mem_gib"] = max(metrics["mem_gib"], peak)
            every = 1 if self.opts.log_every_step else self.cfg.logging.every
            if done % every == 0 or done == self.opts.total_steps:
                self.log.log(done, metrics)
            history.append(metrics)
            if on_step_end is not None:
                on_step_end(done, metrics)
        return history
