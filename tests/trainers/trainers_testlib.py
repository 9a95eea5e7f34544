"""Helpers shared by the trainer tests (tiny run arguments, indexed shards, subprocess runs)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch


def write_indexed(prefix: Path, texts: list[str], tokenizer_path: Path) -> Path:
    """Tokenise ``texts`` (one document each, EOD appended) into ``prefix.bin/.idx``."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    eod = tok.token_to_id("<|endoftext|>")
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for text in texts:
        builder.add_item(torch.tensor(tok.encode(text).ids + [eod]))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")
    return prefix


TINY = [
    "model.preset=tiny",
    "model.vocab_size=50304",
    "model.seq_length=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def pretrain_args(corpus: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    """Arguments of a tiny CPU pretraining run on the GSM8K shards."""
    return [
        "--config",
        str(Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu-pretrain.yaml"),
        f"data.paths=[{corpus['qa']},{corpus['answers']}]",
        "data.weights=[0.7,0.3]",
        f"run_dir={run_dir}",
        *TINY,
        *extra,
    ]


def losses(run_dir: Path) -> list[float]:
    """The per-step losses recorded in a run folder's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], nproc: int = 1, timeout: int = 240, **kw):
    """Run ``dsm <args>`` in a subprocess (under torchrun when ``nproc > 1``)."""
    import os
    import subprocess

    from dsm_engine.procs import python_argv, torchrun_argv

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc > 1:
        # torchrun binds a free port itself: a port picked here could be taken by another
        # test worker before torchrun binds it
        cmd = torchrun_argv(nproc, *args, torchrun_options=("--standalone",))
    else:
        cmd = python_argv("-m", "dsm_engine.cli", *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def launch_line(
    command: list[str], *, nnodes: object, nproc: object, endpoint: str, rdzv_id: str
) -> list[str]:
    """One node's launch, word for word the README's and ``examples/slurm/pretrain.sbatch``'s:
    a ``torchrun`` agent per node meeting the others at ``endpoint`` (c10d rendezvous; it
    hands out the node ranks), the ``dsm`` console script as each rank's program."""
    return [
        "torchrun",
        "--nnodes",
        str(nnodes),
        "--nproc_per_node",
        str(nproc),
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        rdzv_id,
        "--no-python",
        "dsm",
        *command,
    ]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Nodes:
    """``nnodes`` torchrun agents on this machine, each in its own session, as the nodes of
    a cluster would run them; node 0 hosts the rendezvous store (as a head node does)."""

    def __init__(self, command: list[str], log_dir: Path, *, nnodes: int = 2, nproc: int = 1):
        import os
        import subprocess
        import sys
        import time
        import uuid

        bin_dir = str(Path(sys.executable).parent)  # torchrun and dsm of this environment
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore",
            "LOGLEVEL": "INFO",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)
        port = free_port()
        line = launch_line(
            command,
            nnodes=nnodes,
            nproc=nproc,
            endpoint=f"127.0.0.1:{port}",
            rdzv_id=uuid.uuid4().hex[:8],
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs = [log_dir / f"node{i}.log" for i in range(nnodes)]
        self.procs: list[subprocess.Popen] = []
        for log in self.logs:
            with log.open("w") as out:
                self.procs.append(
                    subprocess.Popen(
                        line, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            deadline = time.time() + 120
            while not _listening(port):  # node 0's agent hosts the store once it listens
                assert self.procs[0].poll() is None and time.time() < deadline, self.output(0)
                time.sleep(0.05)

    def output(self, node: int) -> str:
        return self.logs[node].read_text(errors="replace")

    def wait(self, timeout: float) -> list[int]:
        """The agents' exit codes (waits at most ``timeout`` seconds in all)."""
        import time

        deadline = time.time() + timeout
        return [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]

    def group_ranks(self) -> list[int]:
        """The node rank the rendezvous gave each agent."""
        import re

        return [
            int(re.search(r"group_rank=(\d+)", self.output(i)).group(1))
            for i in range(len(self.procs))
        ]

    def kill(self, node: int) -> None:
        """SIGKILL one node: its agent and every process under it, all at once."""
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            agent = psutil.Process(self.procs[node].pid)
            for proc in [agent, *agent.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        self.procs[node].wait()

    def close(self) -> None:
        for node in range(len(self.procs)):
            self.kill(node)

    def tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- node {i}\n{self.output(i)[-chars:]}" for i in range(len(self.procs)))
