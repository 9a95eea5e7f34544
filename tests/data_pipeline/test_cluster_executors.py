"""Mining and decontamination on a cluster give what they give locally: ``--executor ray`` on a
Ray cluster of two nodes on this machine (a head and a worker), ``--executor slurm`` on a
one-node Slurm (``.ci/start_slurm.sh``). Completion markers let a rerun skip finished tasks,
and a task whose Ray worker is killed runs again, losing and duplicating nothing."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _mining_data import SMALL_RUN, make_inputs

from dsm_engine.commands.data_mine import main as mine
from dsm_engine.data_pipeline.decontaminate import main as decontaminate
from dsm_engine.data_pipeline.executors import ExecutorConfig, run_stage

pytestmark = pytest.mark.slow

# two tasks per stage, two minhash buckets, one iteration: every stage kind, few tasks
MINE_ARGS = [
    "--iterations",
    "1",
    "--no-progress",
    "tasks=2",
    "minhash.num_buckets=2",
    *(f"classifier.{k}={v}" for k, v in SMALL_RUN.items()),
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data) -> dict:
    return make_inputs(tmp_path_factory.mktemp("cluster_inputs"), shared_data)


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory) -> Path:
    """Mining, then decontamination of the mined shards, with the local executor."""
    root = tmp_path_factory.mktemp("local")
    mine_args = ["--warc", inputs["glob"], "--seed", inputs["seed"], "--out", str(root / "mine")]
    assert mine([*mine_args, *MINE_ARGS]) == 0
    assert decontaminate(_decont_args(root / "mine", root / "decont")) == 0
    return root


def _decont_args(mined: Path, out: Path) -> list[str]:
    return ["--input", str(mined / "mined"), "--out", str(out), "--tasks", "2"]


def _dsm(*args: str, env: dict | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-P", "-m", "dsm_engine.cli", *args]
    proc = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _files(folder: Path) -> dict[str, list[str]]:
    """Each output file of a folder (by name) as its lines, gzip or not."""
    out = {}
    for path in sorted(folder.iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            out[path.name] = f.read().splitlines()
    return out


def _same_decontamination(out: Path, ref: Path) -> None:
    assert _files(out / "documents") == _files(ref / "documents")
    assert _files(out / "removed") == _files(ref / "removed")
    summary = lambda d: {
        k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "input"
    }
    assert summary(out) == summary(ref)


def _same_mining(out: Path, ref: Path) -> None:
    assert (out / "mined.jsonl").read_text() == (ref / "mined.jsonl").read_text()
    assert json.loads((out / "funnel.json").read_text()) == json.loads(
        (ref / "funnel.json").read_text()
    )


# --- Ray ---------------------------------------------------------------------------------


class RayCluster:
    """``ray start --block`` for a head and one worker node (1 CPU each) on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        # Ray's own folder, short enough for its unix sockets, and not the shared /tmp/ray
        self.temp_dir = tempfile.mkdtemp(prefix="dsm-ray-")
        common = [
            "--block",
            "--num-cpus",
            "1",
            "--node-ip-address",
            "127.0.0.1",
            "--object-store-memory",
            str(100 * 2**20),
            "--disable-usage-stats",
            "--temp-dir",
            self.temp_dir,
        ]
        port = self.address.split(":")[1]
        self.worker: subprocess.Popen | None = None
        self.head = self._start(
            root / "head.log", ["--head", "--port", port, "--include-dashboard", "false", *common]
        )
        try:
            self._join(root, common)
        except BaseException:
            self.close()  # a half-started cluster must not outlive the fixture
            raise

    def _join(self, root: Path, common: list[str]) -> None:
        self._wait_for_nodes(1)
        # `ray start` gives a node 30 s (hard-coded) to register; on a loaded machine the
        # worker can miss that and exit, so a worker that exited is started again.
        worker_args = ["--address", self.address, *common]
        for attempt in range(3):
            self.worker = self._start(root / f"worker{attempt}.log", worker_args)
            if self._wait_for_nodes(2, give_up=lambda: self.worker.poll() is not None):
                break
        else:
            raise RuntimeError(f"the Ray worker did not join {self.address}: see {root}")

    @staticmethod
    def _start(log: Path, args: list[str]) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(
                [sys.executable, "-P", "-m", "ray.scripts.scripts", "start", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                start_new_session=True,
            )

    def _wait_for_nodes(
        self, n: int, timeout: float = 180, give_up: Callable[[], bool] = lambda: False
    ) -> bool:
        """Wait until ``n`` nodes are alive; False when ``give_up()`` says the wait is futile."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(x['Alive'] for x in ray.nodes()))"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(
                [sys.executable, "-P", "-c", probe, self.address], capture_output=True, text=True
            )
            if out.stdout.strip() == str(n):
                return True
            if give_up():
                return False
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {n} nodes")

    def running_task(self) -> int | None:
        """A process of the worker node that is running a datatrove task, if any."""
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in psutil.Process(self.worker.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if "RankWorker.run_for_rank" in " ".join(proc.cmdline()) and proc.children():
                        return proc.pid  # the actor, its task running in a pool process
        return None

    def close(self) -> None:
        for proc in (self.worker, self.head):
            if proc is None:
                continue
            _kill_tree(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything that left the tree
            proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    pytest.importorskip(
        "ray", reason="--executor ray needs the cluster extra: pip install '.[cluster]'"
    )
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    yield cluster
    cluster.close()


def test_mining_and_decontamination_on_ray_equal_local_and_reruns_skip_done_tasks(
    inputs, local, ray_cluster, tmp_path
):
    ray = {"RAY_ADDRESS": ray_cluster.address}
    _dsm(
        "data",
        "mine",
        "--warc",
        inputs["glob"],
        "--seed",
        inputs["seed"],
        "--out",
        str(tmp_path / "mine"),
        *MINE_ARGS,
        "--executor",
        "ray",
        env=ray,
        cwd=tmp_path,
    )
    _same_mining(tmp_path / "mine", local / "mine")

    out = tmp_path / "decont"
    decont = [*_decont_args(local / "mine", out), "--executor", "ray"]
    _dsm("data", "decontaminate", *decont, env=ray, cwd=tmp_path)
    _same_decontamination(out, local / "decont")

    # task 1 loses its completion marker: a rerun runs task 1 again, and only task 1
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "removed").iterdir()}
    (out / "logs" / "completions" / "00001").unlink()
    _dsm("data", "decontaminate", *decont, env=ray, cwd=tmp_path)
    again = {p.name: p.stat().st_mtime_ns for p in (out / "removed").iterdir()}
    assert again["00000.jsonl"] == stamps["00000.jsonl"]
    assert again["00001.jsonl"] != stamps["00001.jsonl"]
    _same_decontamination(out, local / "decont")


def test_a_task_whose_ray_worker_is_killed_runs_again_without_loss_or_duplicates(
    local, ray_cluster, tmp_path
):
    out = tmp_path / "decont"
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "dsm_engine.cli",
        "data",
        "decontaminate",
        *_decont_args(local / "mine", out),
        "--executor",
        "ray",
    ]
    log = tmp_path / "driver.log"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    with log.open("w") as f:
        driver = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while (victim := ray_cluster.running_task()) is None:
            assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        _kill_tree(victim)  # the worker and its task's process, mid-task
        done = list((out / "logs" / "completions").glob("*"))
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        _kill_tree(driver.pid)
    assert len(done) < 2  # the killed task had not finished
    # datatrove saw the worker die and submitted the task again
    assert re.search(r"RayActorError|WorkerCrashedError", log.read_text())
    _same_decontamination(out, local / "decont")
    ids = [json.loads(x)["id"] for lines in _files(out / "documents").values() for x in lines]
    assert len(ids) == len(set(ids))


# --- Slurm -------------------------------------------------------------------------------


def test_mining_and_decontamination_on_slurm_equal_local(inputs, local, slurm_partition, tmp_path):
    slurm = [
        "--executor",
        "slurm",
        f"executor.partition={slurm_partition}",
        "executor.poll_seconds=1",
    ]
    _dsm(
        "data",
        "mine",
        "--warc",
        inputs["glob"],
        "--seed",
        inputs["seed"],
        "--out",
        str(tmp_path / "mine"),
        *MINE_ARGS,
        *slurm,
        cwd=tmp_path,
    )
    _same_mining(tmp_path / "mine", local / "mine")
    out = tmp_path / "decont"
    _dsm("data", "decontaminate", *_decont_args(local / "mine", out), *slurm, cwd=tmp_path)
    _same_decontamination(out, local / "decont")


def test_a_failed_slurm_task_fails_its_stage_by_name(slurm_partition, tmp_path):
    from datatrove.pipeline.readers import JsonlReader

    # the reader's list of files does not exist: the task fails inside the Slurm job
    broken = [JsonlReader(str(tmp_path), paths_file=str(tmp_path / "missing.txt"))]
    cfg = ExecutorConfig(kind="slurm", partition=slurm_partition, poll_seconds=1)
    with pytest.raises(RuntimeError, match=r"stage broken: tasks \[0\] did not complete"):
        run_stage("broken", broken, tasks=1, logging_dir=tmp_path / "logs", cfg=cfg)
