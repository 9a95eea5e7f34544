"""Two nodes on one machine: a ``torchrun`` agent per "node" (``--nnodes 2 --nproc_per_node 1``,
c10d rendezvous on 127.0.0.1), launched with the README's line, trains as one process does;
a node that dies is noticed by the other, and ``resume=auto`` continues the run. The Slurm
example runs the same launch line as a real Slurm job."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainers_testlib import Nodes, free_port, launch_line, losses, pretrain_args

from dsm_engine.trainers.config import PretrainConfig
from dsm_engine.trainers.pretrain import main

REPO = Path(__file__).resolve().parents[2]
STEPS = 12
LOST_NODE_NOTICED_S = 60  # the survivor exits this soon after its peer node dies


def _same_start(init_checkpoint) -> tuple[str, ...]:
    return (f"train.steps={STEPS}", f"checkpoint.load={init_checkpoint}", "checkpoint.every=2")


@pytest.fixture(scope="module")
def one_process_losses(corpus, init_checkpoint, tmp_path_factory) -> list[float]:
    run = tmp_path_factory.mktemp("one_process") / "run"
    assert main(pretrain_args(corpus, run, *_same_start(init_checkpoint))) == 0
    return losses(run)


@pytest.fixture
def nodes():
    """Starts :class:`Nodes`; whatever is still running at the end of the test is killed."""
    started: list[Nodes] = []

    def start(command: list[str], log_dir: Path, **kw) -> Nodes:
        started.append(Nodes(command, log_dir, **kw))
        return started[-1]

    yield start
    for n in started:
        n.close()


@pytest.mark.dist
@pytest.mark.slow
def test_dp2_over_two_nodes_gives_the_losses_of_one_process(
    corpus, init_checkpoint, one_process_losses, nodes, tmp_path
):
    run = tmp_path / "run"
    args = pretrain_args(corpus, run, *_same_start(init_checkpoint), "parallel.dp=2")
    two = nodes(["train", "pretrain", *args], tmp_path / "logs")
    assert two.wait(timeout=600) == [0, 0], two.tail()
    assert sorted(two.group_ranks()) == [0, 1]
    assert losses(run) == pytest.approx(one_process_losses, rel=1e-5, abs=1e-5)


@pytest.mark.dist
@pytest.mark.slow
def test_pp2_over_two_nodes_notices_a_lost_node_and_resumes(
    corpus, init_checkpoint, one_process_losses, nodes, tmp_path
):
    run = tmp_path / "run"
    args = pretrain_args(corpus, run, *_same_start(init_checkpoint), "parallel.pp=2")
    two = nodes(["train", "pretrain", *args], tmp_path / "first")
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not (latest.is_file() and re.fullmatch(r"step_\d{7}", latest.read_text().strip())):
        assert [p.poll() for p in two.procs] == [None, None], two.tail()
        assert time.time() < deadline, two.tail()
        time.sleep(0.02)
    two.kill(1)  # the second node dies mid-run: its agent and its rank, at once
    killed_at = time.time()
    last_complete = int(latest.read_text().strip().removeprefix("step_"))

    code = two.procs[0].wait(timeout=LOST_NODE_NOTICED_S + 60)
    noticed_after = time.time() - killed_at
    survivor = two.output(0)
    assert code != 0, survivor[-3000:]
    assert noticed_after < LOST_NODE_NOTICED_S, noticed_after
    assert "dsm train pretrain: error: lost contact with the other ranks" in survivor
    assert f"resume=auto to continue from the last complete checkpoint in {run}" in survivor
    assert last_complete < STEPS and len(losses(run)) < STEPS  # killed before the end

    again = nodes(["train", "pretrain", *args, "resume=auto"], tmp_path / "resumed")
    assert again.wait(timeout=600) == [0, 0], again.tail()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # the steps up to the last complete checkpoint are the first attempt's, the rest ran again
    first = [r["time"] < killed_at for r in rows]
    assert first == [True] * last_complete + [False] * (STEPS - last_complete)
    assert losses(run) == pytest.approx(one_process_losses, rel=1e-5, abs=1e-5)


@pytest.mark.dist
@pytest.mark.slow
def test_grpo_over_two_nodes_equals_the_same_run_on_one_node(
    arithmetic_pretrained, nodes, tmp_path
):
    from dsm_engine.config import save_config
    from dsm_engine.recipes.arithmetic import grpo_config

    paths, _, init = arithmetic_pretrained  # shared by the session: read-only
    config = tmp_path / "grpo.yaml"
    save_config(
        grpo_config(
            paths,
            init,
            parallel={"dp": 2},
            grpo={"steps": 2, "prompts_per_step": 4, "group_size": 4, "micro_batch_size": 8},
            rollout={"max_new_tokens": 12},
            eval={"every": 0},
            logging={"progress": False, "tensorboard": False},
        ),
        config,
    )
    command = ["train", "grpo", "--config", str(config)]
    two = nodes([*command, f"run_dir={tmp_path / 'two'}"], tmp_path / "two_logs")
    one = nodes([*command, f"run_dir={tmp_path / 'one'}"], tmp_path / "one_logs", nnodes=1, nproc=2)
    assert two.wait(timeout=600) == [0, 0], two.tail()
    assert one.wait(timeout=600) == [0], one.tail()

    def rows(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(x).items() if "time" not in k and "per_s" not in k}
            for x in lines
        ]

    assert len(rows("two")) == 2
    assert any(r["grad_norm"] > 0 and 0 < r["reward_mean"] < 1 for r in rows("two"))
    for a, b in zip(rows("two"), rows("one")):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_a_lost_peer_is_reported_with_what_to_do(corpus, tmp_path, capsys):
    from dsm_engine.trainers import common

    def run(cfg):  # what gloo raises on a rank whose peer process died
        raise RuntimeError(
            "[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:2256: "
            "Connection reset by peer. This is typically caused by a remote worker hanging"
        )

    config = pretrain_args(corpus, tmp_path / "run")
    assert common.run_main("dsm train pretrain", PretrainConfig, config, run) == 1
    err = capsys.readouterr().err
    assert "lost contact with the other ranks (RuntimeError: [third_party/gloo" in err
    assert f"resume=auto to continue from the last complete checkpoint in {tmp_path / 'run'}" in err

    def broken(cfg):
        raise RuntimeError("a bug of ours")

    with pytest.raises(RuntimeError, match="a bug of ours"):
        common.run_main("dsm train pretrain", PretrainConfig, config, broken)


def _sbatch_launch_words() -> list[str]:
    """The words of the torchrun line in examples/slurm/pretrain.sbatch, variables unexpanded."""
    script = (REPO / "examples" / "slurm" / "pretrain.sbatch").read_text().replace("\\\n", " ")
    line = next(x for x in script.splitlines() if "torchrun" in x and not x.startswith("#"))
    words = shlex.split(line)
    return words[words.index("torchrun") :]


def test_the_slurm_example_launches_nodes_as_tested():
    tested = launch_line(
        ["train", "pretrain"],
        nnodes="$SLURM_NNODES",
        nproc="$NPROC_PER_NODE",
        endpoint="$MASTER_ADDR:$MASTER_PORT",
        rdzv_id="$SLURM_JOB_ID",
    )
    assert _sbatch_launch_words()[: len(tested)] == tested


@pytest.mark.dist
@pytest.mark.slow
def test_pretrain_sbatch_trains_on_slurm(
    slurm_partition, corpus, init_checkpoint, one_process_losses, tmp_path
):
    run = tmp_path / "run"
    config, *overrides = pretrain_args(corpus, run, *_same_start(init_checkpoint))[1:]
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "CONFIG": config,
        "NPROC_PER_NODE": "2",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    log = tmp_path / "job.out"
    # the example asks for 4 GPU nodes; this one CPU node runs the same script at pp=2
    sbatch = [
        "sbatch",
        "--wait",
        f"--partition={slurm_partition}",
        "--nodes=1",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        f"--output={log}",
        str(REPO / "examples" / "slurm" / "pretrain.sbatch"),
        "parallel.tp=1",
        "parallel.pp=2",
        *overrides,
    ]
    proc = subprocess.run(sbatch, env=env, capture_output=True, text=True, timeout=900)
    job_log = log.read_text(errors="replace") if log.is_file() else "(no job log)"
    assert proc.returncode == 0, proc.stderr + job_log[-4000:]
    assert losses(run) == pytest.approx(one_process_losses, rel=1e-5, abs=1e-5)
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:07d}"
