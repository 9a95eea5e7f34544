"""Shared bits of the model tests: worker paths and the subprocess environment."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def worker_env() -> dict[str, str]:
    """Environment for worker subprocesses: one thread each, quiet, not inside torchrun."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def free_port() -> int:
    """A free local TCP port for torchrun's rendezvous (port 0 is not resolved by workers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
