"""Shared fixtures. Real data lives in ../shared/data beside the checkout."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def neox_tokenizer_path(shared_data: Path) -> Path:
    return shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"


def pytest_collection_modifyitems(config, items):
    import torch

    # Kernel tests first: megatron-core wraps some fused ops in torch.compile, and once
    # inductor's C++ kernels are loaded into a process, Triton's CPU interpreter can crash there.
    items.sort(key=lambda item: 0 if "kernels" in Path(str(item.fspath)).parts else 1)

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
