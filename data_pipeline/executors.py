"""Runs one datatrove pipeline as a stage, locally, on Slurm or on Ray, and waits for it.

Every stage has its own logging folder; datatrove writes ``completions/<rank>`` when a task
finishes, so re-running a stage only runs the tasks that did not finish (resume), and
``stats/<rank>.json`` per task, which :func:`stage_stats` sums into one dict.

On a cluster the stage's folders must be on a file system every node sees (as datatrove
requires); tasks run in the submitting process's working directory, so relative paths mean
the same everywhere. A task whose Ray worker dies is run again from the start (datatrove
resubmits it up to 3 times); its output files are named by rank and rewritten whole, so a
retry neither loses nor duplicates documents.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor


@dataclass
class ExecutorConfig:
    """Where stages run. ``local`` needs nothing; ``slurm`` submits sbatch arrays; ``ray``
    runs on a Ray cluster (``pip install 'dsm-engine[data,cluster]'``). On Slurm and Ray the
    cluster's free CPUs bound how many tasks run at once."""

    kind: Literal["local", "slurm", "ray"] = "local"
    workers: int = 1  # local: tasks run at once (1 = in this process)
    partition: str = ""  # slurm
    time: str = "12:00:00"  # slurm time limit per task
    qos: str = ""  # slurm quality of service ("" = the partition's default)
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    sbatch_args: dict[str, str] = field(default_factory=dict)
    # slurm: shell line run before each task; "" puts this Python's bin folder first on PATH
    env_command: str = ""
    poll_seconds: int = 30  # slurm: how often to look at the queue and completion markers
    # ray: the cluster to join; "" = $RAY_ADDRESS, else the one `ray start` ran on this
    # machine, else a new one in this process
    address: str = ""


class _LocalExecutor(LocalPipelineExecutor):
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
        with ctx.Pool(self.workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            list(pool.starmap(self._run_for_rank, jobs, chunksize=1))


class _RayExecutor(RayPipelineExecutor):
    """RayPipelineExecutor whose tasks run in the submitting process's working directory
    (a Ray worker starts where ``ray start`` ran)."""

    def __init__(self, *args, cwd: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cwd = cwd

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        os.chdir(self.cwd)
        return super()._run_for_rank(rank, local_rank, node_rank)


def _run_local(pipeline: list, tasks: int, logging_dir: Path, cfg: ExecutorConfig):
    workers = max(1, min(cfg.workers, tasks))
    ex = _LocalExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir))
    ex.run()
    return ex


def _slurm_job_active(job_id: str) -> bool:
    """Whether any task of Slurm job ``job_id`` is still pending or running."""
    proc = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True, text=True
    )
    # a job that left the queue long ago is "Invalid job id": not active either
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _run_slurm(name: str, pipeline: list, tasks: int, logging_dir: Path, cfg: ExecutorConfig):
    if not cfg.partition:
        raise ValueError("executor.partition is required with --executor slurm")
    bin_dir = shlex.quote(str(Path(sys.executable).parent))  # datatrove's launch_pickled_pipeline
    env_command = cfg.env_command or f"export PATH={bin_dir}:$PATH"
    # datatrove queues a stats-merging job after the tasks; if a task fails it could never
    # start, and Slurm keeps such a job pending forever unless told to drop it
    sbatch_args = {"kill-on-invalid-dep": "yes", **cfg.sbatch_args}
    ex = SlurmPipelineExecutor(
        pipeline,
        tasks=tasks,
        time=cfg.time,
        partition=cfg.partition,
        qos=cfg.qos,
        logging_dir=str(logging_dir),
        job_name=f"dsm-{name}",
        cpus_per_task=cfg.cpus_per_task,
        mem_per_cpu_gb=cfg.mem_per_cpu_gb,
        sbatch_args=sbatch_args,
        env_command=env_command,
    )
    ex.run()
    # sbatch returns at once: wait while the array is queued or running and tasks are missing
    while ex.job_id not in (None, -1) and ex.get_incomplete_ranks():
        if not _slurm_job_active(ex.job_id):
            break
        time.sleep(cfg.poll_seconds)
    return ex


def _run_ray(pipeline: list, tasks: int, logging_dir: Path, cfg: ExecutorConfig):
    try:
        import ray
    except ImportError as e:
        raise ImportError("--executor ray needs Ray: pip install 'dsm-engine[data,cluster]'") from e
    if not ray.is_initialized():
        ray.init(address=cfg.address or None)
    ex = _RayExecutor(
        pipeline,
        tasks=tasks,
        logging_dir=str(logging_dir),
        cpus_per_task=cfg.cpus_per_task,
        mem_per_cpu_gb=cfg.mem_per_cpu_gb,
        cwd=os.getcwd(),
    )
    ex.run()
    return ex


def run_stage(
    name: str, pipeline: list, *, tasks: int, logging_dir: Path, cfg: ExecutorConfig
) -> None:
    """Run ``pipeline`` as ``tasks`` tasks; return once all are complete, else raise naming the stage."""
    logging_dir = Path(logging_dir)
    if cfg.kind == "local":
        ex = _run_local(pipeline, tasks, logging_dir, cfg)
    elif cfg.kind == "slurm":
        ex = _run_slurm(name, pipeline, tasks, logging_dir, cfg)
    elif cfg.kind == "ray":
        ex = _run_ray(pipeline, tasks, logging_dir, cfg)
    else:
        raise ValueError(f"executor.kind must be local, slurm or ray, not {cfg.kind!r}")
    missing = ex.get_incomplete_ranks()
    if missing:
        raise RuntimeError(
            f"stage {name}: tasks {missing} did not complete; see {logging_dir}/logs"
        )


def stage_stats(logging_dir: Path) -> dict[str, dict[str, float]]:
    """``{step name: {stat: total}}`` summed over every finished task of a stage."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(int))
    for path in sorted(Path(logging_dir).glob("stats/*.json")):
        for step in json.loads(path.read_text()):
            for key, value in step.get("stats", {}).items():
                total = value.get("total", 0) if isinstance(value, dict) else value
                totals[step["name"]][key] += total
    return {name: dict(stats) for name, stats in totals.items()}


def step_stats(stats: dict[str, dict[str, float]], step_name: str) -> dict[str, float]:
    """The counters of the step called ``step_name`` (datatrove stores "type: name")."""
    totals: dict[str, float] = defaultdict(int)
    for k, v in stats.items():
        if k == step_name or k.endswith(": " + step_name):
            for key, value in v.items():
                totals[key] += value
    return dict(totals)


def stat(stats: dict[str, dict[str, float]], step_name: str, key: str) -> int:
    """One counter of the step called ``step_name`` (0 if absent)."""
    return int(step_stats(stats, step_name).get(key, 0))
