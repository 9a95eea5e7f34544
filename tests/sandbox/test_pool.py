"""The worker pool: results in order, limits validated, protections as the kernel allows."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dsm_engine.sandbox import STATUSES, Sandbox, SandboxConfig, SandboxError


def test_results_come_back_in_order_from_every_worker(sandbox):
    programs = [
        f"import os, time\ntime.sleep({(i % 3) * 0.05})\nprint({i}, os.getpid())" for i in range(12)
    ]
    done = []
    results = sandbox.run_many(programs, on_done=done.append)
    assert [r.stdout.split()[0] for r in results] == [str(i) for i in range(12)]
    assert len(done) == 12 and all(r.ok and r.wall_s > 0 for r in results)
    assert sandbox.stats.programs >= 12 and set(sandbox.stats.by_status) <= set(STATUSES)
    # each program is init of its own PID namespace
    assert {r.stdout.split()[1] for r in results} == {"1"}


def test_preloaded_modules_are_warm(sandbox):
    result = sandbox.run(
        "import sys, time\nstart = time.perf_counter()\nimport sympy, numpy\n"
        "print(time.perf_counter() - start < 0.05, sympy.Rational(1, 3) + sympy.Rational(1, 6))"
    )
    assert result.stdout == "True 1/2\n"


def _kernel_allows_user_namespaces() -> bool:
    probe = subprocess.run(
        ["unshare", "--user", "--net", "--map-root-user", "true"], capture_output=True
    )
    return probe.returncode == 0


def test_protections_are_those_the_kernel_offers(sandbox):
    import landlockpy

    names = " ".join(sandbox.protections)
    if landlockpy.abi_version() >= 6:
        assert "landlock-fs" in names and "landlock-net" in names and "landlock-signals" in names
    if _kernel_allows_user_namespaces():
        assert "user+network-namespace" in names and "pid-namespace" in names
        assert "minimal-root" in names
    assert set(sandbox.missing).isdisjoint(sandbox.protections)


def test_a_required_protection_that_is_missing_is_an_error():
    with pytest.raises(SandboxError, match="quantum-isolation"):
        Sandbox(SandboxConfig(workers=1, require=("quantum-isolation",))).start()


@pytest.mark.parametrize(
    "field, value", [("timeout_s", 0), ("memory_mb", -1), ("output_bytes", 0), ("workers", -2)]
)
def test_bad_limits_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SandboxConfig.{field}"):
        SandboxConfig(**{field: value})


def test_without_landlock_the_minimal_root_still_hides_the_users_files():
    with Sandbox(SandboxConfig(workers=1, landlock=False)) as box:
        if "minimal-root" not in box.protections:
            pytest.skip(f"no minimal root here: {box.missing}")
        assert "landlock" in box.missing
        checkout = Path(__file__).resolve().parents[2]
        code = (
            "import os\nprint(sorted(os.listdir('/')), os.path.exists('/etc/passwd'), "
            f"os.path.exists({str(checkout)!r}), os.path.exists('/root/.ssh'))\n"
            "open('/usr/lib/x', 'w')"
        )
        result = box.run(code)
        assert "False False False" in result.stdout and "/etc" not in result.stdout
        assert result.status == "error" and "Read-only file system" in result.error
        assert box.run("import statistics\nprint(statistics.mean([1, 2]))").stdout == "1.5\n"
