"""Shared fixtures. Real data lives in ../shared/data beside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data shipped beside the checkout (benchmarks, WARC samples, tokenizer)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests read real data from ../shared/data")
    return SHARED_DATA


def run_torchrun(
    worker: str | Path, *args: object, nproc: int = 2, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node nproc worker *args`` on the CPU (gloo, one
    thread per rank); a non-zero exit fails the calling test with the tail of the output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # a launcher's leftovers would join the wrong rendezvous
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), str(worker), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"{Path(worker).name} {args} exited with {proc.returncode}:\n{tail}")
    return proc


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_torchrun`: multi-process tests launch their worker scripts with it."""
    return run_torchrun


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The partition of a one-node Slurm on this machine, started (and, where missing,
    installed) by ``.ci/start_slurm.sh``; the test is skipped, with the script's words, where
    it cannot start (not root, no apt, no munge ...)."""
    script = REPO / ".ci" / "start_slurm.sh"
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no Slurm: {script} did not finish in 15 minutes")
    if proc.returncode != 0:
        pytest.skip(f"no Slurm: {script} failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return proc.stdout.split()[-1]


@pytest.fixture(scope="session")
def neox_tokenizer_path(shared_data: Path) -> Path:
    return shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"


@pytest.fixture(scope="session")
def arithmetic_pretrained(tmp_path_factory):
    """The tiny arithmetic policy of ``dsm_engine.recipes.arithmetic``, pretrained once per
    session (600 steps, ~66% held-out greedy accuracy): ``(paths, eos, checkpoint)``.

    Shared and read-only: tests write their runs under their own ``tmp_path``, never under
    ``paths.root``."""
    import json

    from filelock import FileLock

    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import DemoPaths, prepare, pretrain

    # Under xdist every worker has this session fixture: the first builds it in the run's
    # shared temporary folder and the others read it, so the policy is pretrained once.
    root = tmp_path_factory.getbasetemp()
    if _workers() > 1:
        root = root.parent
    root = root / "arithmetic-pretrained"
    done = root / "done.json"
    with FileLock(str(root) + ".lock"):
        if done.is_file():
            got = json.loads(done.read_text())
            return DemoPaths(root), got["eos"], Path(got["checkpoint"])
        shutil.rmtree(root, ignore_errors=True)  # a worker that died half-way left it
        paths, eos = prepare(root)
        checkpoint = pretrain(paths, eos, steps=600, progress=False)
        destroy_parallel()
        done.write_text(json.dumps({"eos": eos, "checkpoint": str(checkpoint)}))
    return paths, eos, checkpoint


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory, neox_tokenizer_path):
    """A tiny random Llama with the real GPT-NeoX tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    eos = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(neox_tokenizer_path), eos_token=eos, bos_token=eos, unk_token=eos
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# Under pytest-xdist (the README's `-n 2 --dist loadscope`) every test file is one unit of
# work, so a module fixture is built once; the files that start Slurm or Ray share one unit
# because two workers must not start two clusters on the machine. Units are handed out in
# collection order (`--no-loadscope-reorder`), and the files holding slow tests come first: the
# longest unit starting last would leave one worker idle for its whole length.
# (xdist's own `loadgroup` does not group under pytest 9: it renames `item._nodeid`, which
# pytest 9 no longer reads, so it schedules test by test; hence our scheduler.)
CLUSTER_FILES = (
    "tests/data_pipeline/test_cluster_executors.py",
    "tests/trainers/test_multinode.py",
)
_CLUSTER_FIXTURES = {"slurm_partition", "ray_cluster"}


def _workers() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


if _workers() > 1:
    # One torch thread pool per core in all, not per worker: oversubscribed OpenMP pools spin.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers())))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadscope``: one unit per test file, the cluster files in one unit."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "cluster" if path in CLUSTER_FILES else path

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    import torch

    if _workers() > 1:
        _slow_files_first(items)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _slow_files_first(items: list[pytest.Item]) -> None:
    def rel(item: pytest.Item) -> str:
        return item.path.relative_to(REPO).as_posix()

    for item in items:
        if (
            _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ()))
            and rel(item) not in CLUSTER_FILES
        ):
            raise pytest.UsageError(
                f"{rel(item)} starts a cluster: add it to CLUSTER_FILES in tests/conftest.py"
            )
    slow = {item.path for item in items if "slow" in item.keywords}
    order = {item.path: (item.path not in slow, rel(item) not in CLUSTER_FILES) for item in items}
    items.sort(key=lambda item: order[item.path])  # stable: a file's tests keep their order


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
