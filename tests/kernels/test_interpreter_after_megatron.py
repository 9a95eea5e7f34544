"""Triton kernels under the CPU interpreter keep working in a process that also runs megatron-core.

Two faults used to break this (the suite ran kernel tests first to dodge them):

* The checkout's ``kernels/`` folder is importable as a top-level ``kernels`` when the checkout
  root is on sys.path, and transformers imports that name to probe for Hugging Face's
  ``kernels`` package. The second copy re-defined every ``dsm_engine::*`` torch.library op, so
  torch dropped the ops dsm_engine.kernels was calling: segfaults, ``vector::reserve`` errors or
  wrong numbers at the next kernel call (fixed in kernels/__init__.py).
* ``import megatron.core`` imports triton before dsm_engine.kernels selects the interpreter, so
  triton's own ``@jit`` helpers (``tl.zeros``, ``tl.sum``, ...) stayed compiled-mode functions:
  "Cannot call @triton.jit'd outside of the scope of a kernel" (fixed in kernels/_dispatch.py).

The sequence runs in a subprocess so that a crash fails this test rather than ending pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "interpreter_after_megatron_worker.py"
STAGES = [
    "OK before model",
    "OK megatron forward+backward",
    "OK after model",
    "OK kernels folder loaded once",
]


@pytest.mark.slow  # ~30-60 s: a fresh process importing megatron-core and transformers
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is used only without CUDA")
def test_triton_kernels_match_fp64_before_and_after_a_megatron_model_in_one_process():
    env = dict(os.environ)
    # The checkout root on sys.path, as under ``python -m pytest`` run there: the layout in
    # which ``import kernels`` finds our folder.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    env.pop("TRITON_INTERPRET", None)  # our launches interpret CPU tensors without it
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(WORKER)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    done = [line for line in proc.stdout.splitlines() if line.startswith("OK ")]
    detail = f"exit code {proc.returncode}; stages passed: {done}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, detail
    assert done == STAGES, detail
