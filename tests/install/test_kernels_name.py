"""The checkout's ``kernels/`` folder never stands in for Hugging Face's ``kernels`` package.

transformers 5 imports ``kernels`` (Hugging Face's hub-kernels package). Our folder of the same
name is the source of ``dsm_engine.kernels``; Python started in the checkout root with ``-m`` or
``-c`` puts that root first on sys.path, so ``import kernels`` finds our folder first. These run
exactly those command lines from the checkout root and check that transformers works and gets
the real package, whichever of the two is imported first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = REPO / "kernels"

SHOW_KERNELS = "import sys; print('KERNELS', sys.modules['kernels'].__file__)"


def _run_in_checkout(argv: list[str], timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _real_kernels_package(out: str) -> Path:
    path = Path(next(line for line in out.splitlines() if line.startswith("KERNELS ")).split()[1])
    assert not path.resolve().is_relative_to(OURS), f"'kernels' came from our folder: {path}"
    return path


def test_hugging_face_kernels_is_installed_so_these_tests_mean_something():
    import importlib.metadata

    assert importlib.metadata.version("kernels")  # transformers 5's dependency


@pytest.mark.parametrize(
    "imports",
    ["import dsm_engine.kernels, transformers", "import transformers, dsm_engine.kernels"],
    ids=["ours-first", "transformers-first"],
)
def test_python_c_in_the_checkout_root_gets_the_real_kernels_package(imports):
    code = f"{imports}; transformers.LlamaConfig(); import kernels; {SHOW_KERNELS}"
    _real_kernels_package(_run_in_checkout([sys.executable, "-c", code]))


def test_our_folder_under_a_foreign_name_refuses_when_no_real_package_exists(tmp_path):
    # Only the checkout on the path: the folder explains itself instead of posing as `kernels`.
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\n"
        "try:\n    import kernels\nexcept ImportError as e:\n    print('REFUSED', e)\n"
    )
    out = _run_in_checkout([sys.executable, "-c", code])
    assert "REFUSED" in out and "dsm_engine.kernels" in out, out


@pytest.mark.slow  # two conversions in fresh interpreters importing transformers and megatron
@pytest.mark.dist
def test_module_launches_from_the_checkout_root_convert_both_ways(tiny_hf_model, tmp_path):
    ckpt, hf = tmp_path / "dsm", tmp_path / "hf"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run_in_checkout(
        [
            *torchrun,
            "--nproc_per_node",
            "2",
            "-m",
            "dsm_engine.cli",
            "convert",
            "hf-to-dsm",
            "--hf",
            str(tiny_hf_model),
            "--out",
            str(ckpt),
            "--tp",
            "2",
        ]
    )
    _run_in_checkout(
        [
            sys.executable,
            "-m",
            "dsm_engine.cli",
            "convert",
            "dsm-to-hf",
            "--ckpt",
            str(ckpt),
            "--out",
            str(hf),
        ]
    )
    from safetensors.torch import load_file

    before = load_file(tiny_hf_model / "model.safetensors")
    after = load_file(hf / "model.safetensors")
    assert sorted(after) == sorted(before)
    for name, tensor in before.items():
        assert after[name].equal(tensor), name  # TP=2 split and merged back exactly


def test_importing_our_kernels_changes_nothing_other_code_sees():
    """No TRITON_INTERPRET, triton.language untouched; our CPU launches still interpret."""
    code = """
import os, triton, triton.language as tl
from triton.runtime.jit import JITFunction
before_sum, before_call = tl.sum, JITFunction.__call__
import torch
import dsm_engine.kernels as k
x, y = torch.randn(8, 5), torch.randn(8, 5)
out = k.kl_k3(x, y, impl="triton")
assert torch.allclose(out, k.kl_k3_ref(x, y), atol=1e-6), "interpreted kernel is wrong"
assert "TRITON_INTERPRET" not in os.environ, "TRITON_INTERPRET was set"
assert tl.sum is before_sum and isinstance(tl.sum, JITFunction), "triton.language was changed"
assert JITFunction.__call__ is before_call, "JITFunction.__call__ was left patched"
print("UNCHANGED")
"""
    env_free = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code],
        env=env_free,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "UNCHANGED" in proc.stdout, proc.stderr[-3000:]
