"""Shared helpers for the benchmark scripts: timing, peak memory, environment, result files."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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


def write_results(name: str, rows: list[dict], env: dict, notes: list[str] | None = None) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (a table of ``rows``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": env, "rows": rows, "notes": notes or []}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"# {name}", "", " | ".join(f"{k}: {v}" for k, v in env.items()), ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    lines += [""] + [f"- {n}" for n in notes or []]
    out = RESULTS / f"{name}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text(), file=sys.stdout)
    return out


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
