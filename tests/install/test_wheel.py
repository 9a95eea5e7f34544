"""A wheel built from the sdist is the whole engine, and runs without the checkout.

The sdist is built first and the wheel from it, so the C++ extension must compile from what the
sdist ships. The wheel goes into a new virtualenv whose only view of the dependencies is a
``.pth`` line naming this environment's site-packages (installing torch, megatron-core and the
rest again would cost minutes and the network, and would test pip, not us); a plain path line
does not run this environment's ``.pth`` hooks, so the editable install of the checkout stays
invisible there. Every command runs outside the checkout.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# folder in the repository -> where its modules sit in the wheel
TREES = {
    "dsm_engine": "dsm_engine",
    "kernels": "dsm_engine/kernels",
    "data_pipeline": "dsm_engine/data_pipeline",
}


def _run(argv: list[str], cwd: Path, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def _expected_members() -> set[str]:
    members = {"dsm_engine/py.typed"}
    for folder, target in TREES.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                members.add(f"{target}/{path.relative_to(REPO / folder).as_posix()}")
    return members


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            "-P",
            "-m",
            "build",
            "--sdist",
            "--no-isolation",
            "--outdir",
            str(out),
            str(REPO),
        ],
        cwd=out,
    )
    (sdist,) = out.glob("dsm_engine-*.tar.gz")
    _run(
        [
            sys.executable,
            "-P",
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(sdist),
        ],
        cwd=out,
    )
    (built,) = out.glob("dsm_engine-*.whl")
    return built


@pytest.mark.slow  # builds the sdist and the wheel (compiles the C++ extension)
def test_the_wheel_holds_every_module_the_typed_marker_and_the_extension(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_members() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert any(n.startswith("dsm_engine/_C.") and n.endswith(".so") for n in names), names
    assert not any(n.split("/")[0] in ("kernels", "data_pipeline", "tests") for n in names)


@pytest.mark.slow  # a new virtualenv, then a short pretraining + GRPO run from the wheel
def test_the_installed_wheel_runs_without_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, dsm = venv / "bin" / "python", venv / "bin" / "dsm"
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "dsm_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)

    assert "train" in _run([str(dsm), "--help"], cwd=tmp_path)
    where = _run(
        [
            str(python),
            "-c",
            "import dsm_engine.grpo, dsm_engine.kernels, dsm_engine.data_pipeline, "
            "dsm_engine._C; print('FROM', dsm_engine.__file__)",
        ],
        cwd=tmp_path,
    )
    origin = Path(where.split("FROM ")[1].split()[0])
    assert origin.is_relative_to(venv) and not origin.is_relative_to(REPO), origin

    out = _run(
        [
            str(python),
            str(REPO / "examples" / "grpo_arithmetic.py"),
            "--out",
            str(tmp_path / "run"),
            "--pretrain-steps",
            "4",
            "--grpo-steps",
            "2",
        ],
        cwd=tmp_path,
    )
    assert "held-out accuracy by step" in out, out[-3000:]
    rows = (tmp_path / "run" / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows if '"loss"' in r] == [1, 2]
