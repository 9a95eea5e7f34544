"""The Figure 5 recipe: the report and plot of four accuracy curves, the paper's three findings
judged on them, and (slow) a tiny end-to-end run of the four methods with equal budgets."""

from __future__ import annotations

import json

import pytest

from dsm_engine.recipes.paradigm import (
    METHODS,
    ParadigmOptions,
    ParadigmResult,
    collect,
    read_curve,
    write_report,
)


def _result(finals: dict[str, float]) -> ParadigmResult:
    """Curves from 0.5 at step 0 rising linearly to ``finals`` at step 30."""
    curves = {
        m: {s: 0.5 + (final - 0.5) * s / 30 for s in (0, 10, 20, 30)} for m, final in finals.items()
    }
    return ParadigmResult(curves, {m: 480 for m in finals}, tail=2)


def test_the_report_holds_every_curve_and_the_findings_as_the_paper_has_them(tmp_path):
    result = _result({"rft": 0.6, "online_rft": 0.7, "grpo_outcome": 0.8, "grpo_process": 0.81})

    write_report(result, tmp_path, meta={"cpu": "test"}, notes=["One seed."])

    report = (tmp_path / "report.md").read_text()
    assert "cpu: test" in report.splitlines()[2] and "One seed." in report
    assert "| GRPO+PS | 480 | 50.0 | 60.3 | 70.7 | 81.0 |" in report
    assert report.count("- matches the paper") == 3 and "does not match" not in report
    saved = json.loads((tmp_path / "paradigm.json").read_text())
    assert set(saved["curves"]) == set(METHODS) and saved["curves"]["rft"]["30"] == 0.6
    assert [f["held"] for f in saved["findings"]] == [True, True, True]
    assert (tmp_path / "paradigm.png").stat().st_size > 10_000


def test_a_finding_that_fails_is_reported_with_its_numbers(tmp_path):
    # Online RFT below RFT; process supervision tied with outcome within the tolerance.
    result = _result({"rft": 0.7, "online_rft": 0.6, "grpo_outcome": 0.8, "grpo_process": 0.79})

    findings = dict(result.findings(tolerance=0.02))

    held = list(findings.values())
    assert held == [False, True, True]
    first = next(iter(findings))
    assert first.startswith("Online RFT > RFT: 58.3% vs 66.7%") and "does not match" in first
    assert "final 60.0% vs 70.0%" in first


def test_findings_skip_methods_that_did_not_run():
    result = _result({"rft": 0.6, "online_rft": 0.7})

    assert [f.split(":")[0] for f, _ in result.findings()] == ["Online RFT > RFT"]


def test_read_curve_takes_the_evaluated_steps_of_a_run(tmp_path):
    rows = [{"step": 0, "eval_accuracy": 0.5}, {"step": 1, "loss": 1.0}]
    rows.append({"step": 2, "loss": 0.9, "eval_accuracy": 0.75})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert read_curve(tmp_path) == {0: 0.5, 2: 0.75}


def test_collect_reads_each_runs_curve_and_budget_from_its_folder(tmp_path):
    for method, steps in (("rft", 3), ("online_rft", 5)):  # online_rft ran past its config
        run = tmp_path / method
        run.mkdir()
        (run / "config.yaml").write_text(
            "grpo:\n  steps: 3\n  prompts_per_step: 2\n  group_size: 4\n"
        )
        rows = [{"step": 0, "eval_accuracy": 0.25}] + [{"step": s + 1} for s in range(steps)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = collect(tmp_path, ParadigmOptions(), methods=("rft", "online_rft"))

    # the samples drawn (logged steps x prompts x group), not the configured steps
    assert result.budgets == {"rft": 3 * 2 * 4, "online_rft": 5 * 2 * 4}
    assert result.curves == {"rft": {0: 0.25}, "online_rft": {0: 0.25}}


def test_options_reject_an_empty_budget():
    with pytest.raises(ValueError, match="steps"):
        ParadigmOptions(steps=0)
    assert ParadigmOptions(steps=2, prompts_per_step=3, group_size=4).samples == 24


@pytest.mark.slow
def test_four_methods_run_from_one_policy_with_equal_budgets(arithmetic_pretrained, tmp_path):
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import label_and_train_prm
    from dsm_engine.recipes.paradigm import run_methods

    paths, _, init = arithmetic_pretrained  # shared by the session: read-only
    prms, _ = label_and_train_prm(
        paths,
        init,
        tmp_path / "prm",
        label_prompts=8,
        heldout_prompts=4,
        temperatures=(1.0,),
        rm_steps=4,
        progress=False,
    )
    destroy_parallel()
    options = ParadigmOptions(
        steps=2, prompts_per_step=4, group_size=2, eval_every=2, eval_prompts=8, tail=2
    )

    result = run_methods(paths, init, tmp_path / "runs", options, prms=prms)

    assert list(result.curves) == list(METHODS)
    assert set(result.budgets.values()) == {2 * 4 * 2}
    for curve in result.curves.values():
        assert sorted(curve) == [0, 2] and all(0.0 <= a <= 1.0 for a in curve.values())
    starts = {curve[0] for curve in result.curves.values()}
    assert len(starts) == 1  # the same pretrained policy, evaluated greedily
    write_report(result, tmp_path / "report")
    assert len(result.findings()) == 3
