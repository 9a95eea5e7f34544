"""One warm sandbox shared by the sandbox tests. Its time limit is generous (the machine may
be busy); tests of runaway programs pass a short one per call."""

from __future__ import annotations

import pytest

from dsm_engine.sandbox import Sandbox, SandboxConfig

LIMITS = SandboxConfig(timeout_s=10.0, memory_mb=512, output_bytes=10_000, max_procs=16, workers=2)


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox(LIMITS) as box:
        yield box
