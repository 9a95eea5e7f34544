"""Shared helpers for the benchmark scripts: timing, peak memory, environment, result files."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def require_cuda(script: str) -> bool:
    """Print why the benchmark cannot run without CUDA; the caller then exits 0."""
    if torch.cuda.is_available():
        return True
    print(f"{script}: needs a CUDA GPU (none found); nothing measured.")
    return False


def environment() -> dict[str, str]:
    """Device and library versions, recorded with every result."""
    import triton

    env = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "cuda": str(torch.version.cuda),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = props.name
        env["sm_count"] = str(props.multi_processor_count)
        env["memory_gib"] = f"{props.total_memory / 2**30:.1f}"
    return env


def run_info(packages: tuple[str, ...] = ()) -> dict[str, str]:
    """``environment()`` plus the CPU, its load, the commit and the ``packages``' versions."""
    from importlib import metadata

    env = environment()
    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    env["cpu"] = f"{cpu} ({os.cpu_count()} logical CPUs)"
    env["load_avg_1m_5m_15m"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        # the result files themselves are rewritten by the runs: they do not make code dirty
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "."]
        + [":!benchmarks/results"],
        capture_output=True,
        text=True,
    )
    env["commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    for name in packages:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "absent"
    return env


def median_s(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of ``repeats`` calls of ``fn`` (CPU work), and all the times."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), times


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/status``)."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> int:
    """Return freed heap pages to the OS and restart the peak-RSS count; returns RSS now.

    ``malloc_trim`` first, or memory freed earlier would be reused without raising the RSS
    and the next peak would be undercounted.
    """
    with contextlib.suppress(OSError):  # not glibc: the heap may keep some, undercounting
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size since the last ``reset_peak_rss`` (``VmHWM``)."""
    return _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")
    return int(found.group(1))


def run_child(
    script: Path, args: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> dict:
    """Run ``script`` in a fresh interpreter (``python -P``, this environment plus ``env``)
    and parse the JSON object that its last stdout line holds; a crash or timeout becomes
    ``{"error": ...}``."""
    cmd = [sys.executable, "-P", str(script), *args]
    child_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=child_env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)[-300:]}
    return json.loads(lines[-1])


def median_ms(fn: Callable[[], object], warmup: int = 5, rep: int = 20) -> float:
    """Median wall time of ``fn`` in ms (``triton.testing.do_bench``, L2 flushed per call)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory allocated while ``fn`` runs, beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def matmul_tflops(m: int, k: int, n: int, dtype: torch.dtype = torch.bfloat16) -> float:
    """Measured dense matmul rate (TFLOP/s) at an ``(m, k) @ (k, n)`` shape on this device."""
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    ms = median_ms(lambda: a @ b)
    return 2 * m * k * n / (ms * 1e-3) / 1e12


def write_results(
    name: str,
    rows: list[dict],
    env: dict,
    notes: list[str] | None = None,
    out_dir: Path = RESULTS,
    echo: bool = True,
) -> Path:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md`` (a table of ``rows``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": env, "rows": rows, "notes": notes or []}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"# {name}", "", " | ".join(f"{k}: {v}" for k, v in env.items()), ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    lines += [""] + [f"- {n}" for n in notes or []]
    out = out_dir / f"{name}.md"
    out.write_text("\n".join(lines) + "\n")
    if echo:
        print(out.read_text(), file=sys.stdout)
    return out


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
