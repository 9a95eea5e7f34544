"""Smoke test of benchmarks/bench_profiling_overhead.py at a tiny size (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_profiling_overhead.py"


def test_the_overhead_benchmark_pairs_off_and_on_runs_on_both_clocks(tmp_path):
    args = ["--repeats", "1", "--steps", "4", "--warmup", "2", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-P", str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "profiling_overhead.json").read_text())
    assert {"torch", "cpu", "commit", "megatron-core"} <= set(result["environment"])
    modes = [(r["mode"], r.get("clock")) for r in result["rows"]]
    for clock in ("wall", "cpu"):
        assert {("off", clock), ("on", clock), ("on vs off (paired runs)", clock)} <= set(modes)
    calls = {r["mode"]: r["us_per_phase"] for r in result["rows"] if "us_per_phase" in r}
    assert calls["phase() call, off"] < calls["phase() call, on"]
