"""Runs one datatrove pipeline as a stage, locally, on Slurm or on Ray, and waits for it.

Every stage has its own logging folder; datatrove writes ``completions/<rank>`` when a task
finishes, so re-running a stage only runs the tasks that did not finish (resume), and
``stats/<rank>.json`` per task, which :func:`stage_stats` sums into one dict.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class ExecutorConfig:
    """Where stages run. ``local`` needs nothing; ``slurm`` submits sbatch arrays; ``ray``
    needs a running Ray cluster (``pip install ray``)."""

    kind: Literal["local", "slurm", "ray"] = "local"
    workers: int = 1  # local: tasks run at once (1 = in this process)
    partition: str = ""  # slurm
    time: str = "12:00:00"  # slurm time limit per task
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    sbatch_args: dict[str, str] = field(default_factory=dict)
    poll_seconds: int = 30  # slurm: how often to look for completion markers


def _local_executor_class():
    from datatrove.executor import LocalPipelineExecutor

    class LocalExecutor(LocalPipelineExecutor):
        """LocalPipelineExecutor minus its multiprocessing Manager, with the same completion
        markers: one worker runs the tasks in this process, one after another; more run them
        in a pool whose processes die with this one (``children.die_with_parent``), so a killed
        run leaves nothing writing into its folders."""

        def run(self):
            ranks = self.get_incomplete_ranks(range(self.tasks))
            if not ranks:
                return
            self.save_executor_as_json()
            if self.workers == 1:
                pipeline = self.pipeline
                for rank in ranks:
                    self.pipeline = copy.deepcopy(pipeline)  # fresh step state (stats) per task
                    self._run_for_rank(rank)
                self.pipeline = pipeline
                return
            import multiprocess

            from .children import die_with_parent

            # spawn, not datatrove's forkserver: the workers must be this process's own
            # children for the kernel to kill them with it (forkserver workers hold the
            # forkserver open after we die), and fork is unsafe beside the progress thread
            ctx = multiprocess.get_context("spawn")
            # local rank 0 logs to the console: one task in each round of `workers`
            jobs = [(rank, i % self.workers) for i, rank in enumerate(ranks)]
            with ctx.Pool(
                self.workers, initializer=die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                list(pool.starmap(self._run_for_rank, jobs, chunksize=1))

    return LocalExecutor


def run_stage(
    name: str, pipeline: list, *, tasks: int, logging_dir: Path, cfg: ExecutorConfig
) -> None:
    """Run ``pipeline`` as ``tasks`` tasks; return once all are complete, else raise naming the stage."""
    logging_dir = Path(logging_dir)
    if cfg.kind == "local":
        workers = max(1, min(cfg.workers, tasks))
        ex = _local_executor_class()(
            pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir)
        )
        ex.run()
    elif cfg.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not cfg.partition:
            raise ValueError("executor.partition is required with --executor slurm")
        ex = SlurmPipelineExecutor(
            pipeline, tasks=tasks, time=cfg.time, partition=cfg.partition, logging_dir=str(logging_dir),
            job_name=f"dsm-{name}", cpus_per_task=cfg.cpus_per_task, mem_per_cpu_gb=cfg.mem_per_cpu_gb,
            sbatch_args=cfg.sbatch_args or None,
        )  # fmt: skip
        ex.run()
        while ex.get_incomplete_ranks():  # sbatch returns at once: wait on completion markers
            time.sleep(cfg.poll_seconds)
    elif cfg.kind == "ray":
        try:
            from datatrove.executor import RayPipelineExecutor
        except ImportError as e:
            raise ImportError("--executor ray needs Ray: pip install 'ray[default]'") from e
        ex = RayPipelineExecutor(
            pipeline, tasks=tasks, workers=cfg.workers, logging_dir=str(logging_dir)
        )
        ex.run()
    else:
        raise ValueError(f"executor.kind must be local, slurm or ray, not {cfg.kind!r}")
    missing = ex.get_incomplete_ranks()
    if missing:
        raise RuntimeError(
            f"stage {name}: tasks {missing} did not complete; see {logging_dir}/logs"
        )


def stage_stats(logging_dir: Path) -> dict[str, dict[str, float]]:
    """``{step name: {stat: total}}`` summed over every finished task of a stage."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in sorted(Path(logging_dir).glob("stats/*.json")):
        for step in json.loads(path.read_text()):
            for key, value in step.get("stats", {}).items():
                total = value.get("total", 0) if isinstance(value, dict) else value
                totals[step["name"]][key] += total
    return {name: dict(stats) for name, stats in totals.items()}


def stat(stats: dict[str, dict[str, float]], step_name: str, key: str) -> int:
    """One counter of the step called ``step_name`` (datatrove stores "type: name"; 0 if absent)."""
    return int(
        sum(
            v.get(key, 0)
            for k, v in stats.items()
            if k == step_name or k.endswith(": " + step_name)
        )
    )
