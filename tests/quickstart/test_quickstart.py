"""``dsm quickstart`` end to end: the report of a short run, and Ctrl-C + resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsm_engine.quickstart import STAGES
from dsm_engine.quickstart.report import SECTIONS

STAGE_NAMES = [name for name, _, _ in STAGES]


def quickstart(out: Path, minutes: float, shared_data: Path, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "dsm_engine.cli",
        "quickstart",
        "--out",
        str(out),
        "--minutes",
        str(minutes),
        "--data-dir",
        str(shared_data),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen
    )


def default_sigint() -> None:
    """Give the child Ctrl-C's default action, as a terminal does: a job started in the
    background of a script inherits SIGINT ignored, and the interrupt would not arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def section(report: str, title: str) -> str:
    """The text of the ``## title`` section."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", report, re.S | re.M)
    assert m, f"section '{title}' missing"
    return m.group(1)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, shared_data) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("quickstart") / "run"
    return out, finish(quickstart(out, 3, shared_data))


@pytest.mark.slow
def test_three_minute_run_writes_a_report_with_every_section(short_run):
    out, log = short_run
    for name in STAGE_NAMES:
        assert f"{name}:" in log and (out / "stages" / f"{name}.done.json").is_file(), name
    report = (out / "report.md").read_text()
    for title in SECTIONS:
        section(report, title)
    funnel = section(report, "Data funnel")
    for row in (
        "pages in",
        "HTML pages",
        "language kept",
        "near-dedup",
        "math classifier",
        "after decontamination",
        "documents with benchmark text",
        "lines removed",
    ):
        assert row in funnel, row
    # the generated pages that copy GSM8K test questions are caught by decontamination
    data = json.loads((out / "stages" / "data.done.json").read_text())["info"]
    planted = len(data["inputs"]["planted_benchmark_questions"])
    assert planted > 0 and data["decontamination"]["documents_contaminated"] >= planted
    assert "![pretrain_loss](plots/pretrain_loss.png)" in section(report, "Pretraining")
    assert "![grpo_curves](plots/grpo_curves.png)" in section(report, "GRPO")
    for png in ("pretrain_loss.png", "grpo_curves.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = section(report, "Evaluation before and after GRPO")
    for bench in ("held-out arithmetic", "GSM8K"):
        row = next(line for line in table.splitlines() if bench in line)
        before, after = row.split("|")[3:5]
        assert re.fullmatch(r" \d+\.\d ", before) and re.fullmatch(r" \d+\.\d ", after), row
    timings = section(report, "Timings")
    for name in STAGE_NAMES:
        assert re.search(rf"^\| {name} \| .* \| \d+\.\d \| \d+\.\d \|$", timings, re.M), name
    configs = section(report, "Resolved configs")
    for path in ("data/mine/config.yaml", "configs/pretrain.yaml", "configs/grpo.yaml"):
        assert path in configs, path
    assert "pretrain_steps:" in configs and "group_size:" in configs
    html = (out / "report.html").read_text()
    assert all(f"<h2>{t}</h2>" in html for t in SECTIONS) and 'src="plots/grpo_curves.png"' in html


@pytest.mark.slow
def test_pretraining_loss_falls_and_grpo_logs_every_step(short_run):
    out, _ = short_run
    pre = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in pre] == list(range(1, len(pre) + 1))
    assert pre[-1]["loss"] < pre[0]["loss"] - 2.0
    grpo = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in grpo if "reward_mean" in r]
    assert (
        len(steps) == json.loads((out / "stages" / "grpo.done.json").read_text())["info"]["steps"]
    )
    assert all({"kl_mean", "accuracy"} <= set(r) for r in steps)


@pytest.mark.slow
def test_ctrl_c_mid_stage_leaves_a_run_that_resumes(tmp_path, shared_data):
    out = tmp_path / "run"
    proc = quickstart(out, 1, shared_data, start_new_session=True, preexec_fn=default_sigint)
    first_ckpt = out / "pretrain" / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not first_ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first_ckpt.is_file(), proc.communicate()[0][-3000:]
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log[-3000:]
    assert "rerun with --out" in log
    stages = out / "stages"
    assert {p.name for p in stages.iterdir()} == {"data.done.json", "corpus.done.json"}
    before = {p.name: p.read_text() for p in stages.iterdir()}

    log = finish(quickstart(out, 1, shared_data))
    assert "data: mine math pages, decontaminate: done" in log and "skipped" in log
    assert all((stages / n).read_text() == text for n, text in before.items())
    assert {p.name for p in stages.iterdir()} == {f"{n}.done.json" for n in STAGE_NAMES}
    pre = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in pre] == list(range(1, len(pre) + 1))
    assert pre[0]["time"] < killed_at < pre[-1]["time"]  # continued, not restarted
    assert (out / "report.md").is_file()
    # another option on the same folder is refused, naming it
    proc = quickstart(out, 4, shared_data)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "minutes" in text
