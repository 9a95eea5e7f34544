"""Smoke test of benchmarks/peers/bench_grader.py at a tiny size (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers" / "bench_grader.py"


def test_the_grader_benchmark_writes_labelled_scores_for_both_graders(tmp_path, shared_data):
    args = ["--math", "6", "--gsm8k", "4", "--adversarial", "6", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, "-P", str(SCRIPT), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "peers_grader.json").read_text())
    assert {"device", "load_average_1m", "commit", "versions"} <= set(result["environment"])
    rows = {(r["set"], r["grader"]): r for r in result["rows"]}
    assert set(rows) == {
        (s, g) for s in ("MATH", "GSM8K", "adversarial", "all") for g in ("ours", "math-verify")
    }
    for row in rows.values():
        assert 0 < row["right_pairs"] < row["pairs"]  # both labels present in every set
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
    assert rows["all", "ours"]["pairs"] == sum(
        rows[s, "ours"]["pairs"] for s in ("MATH", "GSM8K", "adversarial")
    )
    assert "| all | ours |" in (tmp_path / "peers_grader.md").read_text()
