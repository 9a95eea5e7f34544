"""Command lines for the Python processes the engine starts.

Every child runs with the checkout root off ``sys.path``: ``python -m`` and ``python -c`` put the
current folder first, and a checkout's top-level ``kernels/`` (the source of
``dsm_engine.kernels``) would then stand where Hugging Face's ``kernels`` package is expected.
``python -P`` (Python 3.11+) leaves the current folder out; torchrun runs the ``dsm`` console
script with ``--no-python``, whose ``sys.path[0]`` is the script's own folder.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


def python_argv(*args: str) -> list[str]:
    """``python -P *args`` with this interpreter (``args`` like ``"-m", "dsm_engine.cli", ...``)."""
    return [sys.executable, "-P", *args]


def dsm_script() -> str:
    """Path of the ``dsm`` console script installed beside this interpreter."""
    candidate = Path(sysconfig.get_path("scripts")) / "dsm"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("dsm")
    if found is None:
        raise FileNotFoundError(
            f"the dsm console script is not installed beside {sys.executable}: "
            "pip install the project (pip install -e .) first"
        )
    return found


def torchrun_argv(nproc: int, *dsm_args: str, torchrun_options: tuple[str, ...] = ()) -> list[str]:
    """``torchrun --nproc_per_node nproc [options] --no-python dsm *dsm_args``."""
    return [
        *python_argv("-m", "torch.distributed.run"),
        "--nproc_per_node",
        str(nproc),
        *torchrun_options,
        "--no-python",
        dsm_script(),
        *dsm_args,
    ]
