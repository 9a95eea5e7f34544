"""The tool-use proof (issue #19): the report and plot of both GRPO runs' curves with the
claims judged on them."""

from __future__ import annotations

import json

import pytest

from dsm_engine.recipes.tool_proof import (
    RunCurves,
    ToolProofOptions,
    ToolProofResult,
    read_run,
    write_report,
)


def _result(tool_final: float, no_tool_final: float, rates: list[float]) -> ToolProofResult:
    """Held-out accuracy 0 at step 0 rising linearly to the finals at step 8; one tool-call
    rate per step."""
    steps = range(1, len(rates) + 1)
    tools = RunCurves(
        heldout={s: tool_final * s / 8 for s in (0, 4, 8)},
        sampled={s: 0.1 * s for s in steps},
        call_rate=dict(zip(steps, rates)),
    )
    no_tools = RunCurves(
        heldout={s: no_tool_final * s / 8 for s in (0, 4, 8)},
        sampled={s: 0.0 for s in steps},
        call_rate={},
    )
    return ToolProofResult({"tools": tools, "no_tools": no_tools}, tail=2)


def test_the_report_holds_both_runs_and_the_claims_that_held(tmp_path):
    result = _result(0.5, 0.0, [0.4, 0.6, 0.9, 1.0])

    write_report(result, tmp_path, meta={"cpu": "test"}, notes=["One seed."])

    report = (tmp_path / "report.md").read_text()
    assert "cpu: test" in report.splitlines()[2] and "One seed." in report
    assert "| GRPO, tool on | 0.00 | 0.25 | 0.50 |" in report
    assert "| GRPO, tool off | 0.00 | 0.00 | 0.00 |" in report
    assert "| GRPO, tool on: tool-call rate | 0.40 | 0.60 | 0.90 | 1.00 |" in report
    assert "tool off: tool-call rate" not in report  # no tool, no rate
    assert "0.40 at step 1 -> 0.95 (mean of the last 2 steps)" in report
    assert report.count("- holds") == 3 and "does not hold" not in report
    saved = json.loads((tmp_path / "tool_grpo.json").read_text())
    assert saved["runs"]["tools"]["call_rate"] == {"1": 0.4, "2": 0.6, "3": 0.9, "4": 1.0}
    assert saved["runs"]["no_tools"]["heldout"]["8"] == 0.0
    assert [f["held"] for f in saved["findings"]] == [True, True, True]
    assert (tmp_path / "tool_grpo.png").stat().st_size > 10_000


def test_claims_that_fail_are_reported_with_their_numbers():
    # the rate falls, the gap is under the margin and the no-tool run learned in its head
    result = _result(0.4, 0.3, [0.5, 0.4, 0.3, 0.3])

    held = [h for _, h in result.findings()]

    assert held == [False, False, False]
    gap = result.findings()[1][0]
    assert "0.00 -> 0.40; without it 0.00 -> 0.30 (gap +0.10, needed > 0.20)" in gap


def test_read_run_splits_held_out_accuracy_from_the_steps_samples(tmp_path):
    rows = [
        {"step": 0, "eval_accuracy": 0.0},
        {"step": 1, "accuracy": 0.25, "tool/call_rate": 0.5},
        {"step": 2, "accuracy": 0.5, "tool/call_rate": 0.75, "eval_accuracy": 0.3},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    curves = read_run(tmp_path)

    assert curves.heldout == {0: 0.0, 2: 0.3}
    assert curves.sampled == {1: 0.25, 2: 0.5}
    assert curves.call_rate == {1: 0.5, 2: 0.75}
    assert curves.first_rate() == 0.5 and curves.late_rate(5) == 0.625


def test_options_reject_a_corpus_that_leaves_the_rate_no_room():
    with pytest.raises(ValueError, match="tool_fraction"):
        ToolProofOptions(tool_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        ToolProofOptions(steps=0)
