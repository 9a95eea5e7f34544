"""The tool-use proof packaged: pretrain the tool-arithmetic policy once, run GRPO with and
without the Python tool from that checkpoint, and report what matched.

``run_proof`` does the training (``dsm_engine.recipes.tool_arithmetic`` holds the task and
the configs) and reads each run's curves into a ``ToolProofResult``: held-out greedy accuracy
at the evaluated steps, the sampled accuracy and the tool-call rate (share of samples that ran
code; tool run only) at every step. ``write_report`` writes ``tool_grpo.json``, ``report.md``
and ``tool_grpo.png`` and judges the claims of issue #19: the tool-call rate rises, the tool
run's held-out accuracy after GRPO beats the no-tool run's, the no-tool run stays low.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsm_engine.recipes.report_files import write_report_files

RUNS: tuple[str, ...] = ("tools", "no_tools")
LABELS: dict[str, str] = {"tools": "GRPO, tool on", "no_tools": "GRPO, tool off"}


@dataclass(frozen=True)
class ToolProofOptions:
    """Sizes of the proof. num_docs / tool_fraction / seed: the pretraining corpus
    (``tool_arithmetic.prepare``); pretrain_steps; then each GRPO run's steps, prompts per step,
    group size and max_new_tokens; eval_every / eval_prompts: held-out greedy evaluation."""

    num_docs: int = 4000
    tool_fraction: float = 0.5
    seed: int = 0
    pretrain_steps: int = 1200
    steps: int = 16
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 64
    eval_every: int = 4
    eval_prompts: int = 50
    progress: bool = False

    def __post_init__(self) -> None:
        sizes = (self.num_docs, self.pretrain_steps, self.steps, self.prompts_per_step)
        if min(*sizes, self.group_size, self.eval_every, self.eval_prompts) < 1:
            raise ValueError(f"every size must be >= 1: {self}")
        if not 0.0 < self.tool_fraction < 1.0:
            # 0: nothing to copy from; 1: no room for the call rate to rise.
            raise ValueError(f"tool_fraction must be in (0, 1), got {self.tool_fraction}")

    def grpo_overrides(self) -> dict[str, Any]:
        """The sections of ``tool_arithmetic.grpo_config`` these options set."""
        return {
            "grpo": {
                "steps": self.steps,
                "prompts_per_step": self.prompts_per_step,
                "group_size": self.group_size,
            },
            "rollout": {"max_new_tokens": self.max_new_tokens},
            "eval": {
                "every": self.eval_every,
                "num_prompts": self.eval_prompts,
                "max_new_tokens": self.max_new_tokens,
            },
            "logging": {"tensorboard": False, "progress": self.progress},
        }


@dataclass
class RunCurves:
    """One GRPO run: held-out greedy accuracy by evaluated step (0: the pretrained policy),
    sampled accuracy and tool-call rate by training step (``call_rate`` empty: tool off)."""

    heldout: dict[int, float]
    sampled: dict[int, float]
    call_rate: dict[int, float]

    def first_rate(self) -> float:
        """Tool-call rate of the first step's samples (the pretrained policy's)."""
        return self.call_rate[min(self.call_rate)]

    def late_rate(self, tail: int) -> float:
        """Mean tool-call rate over the last ``tail`` steps."""
        steps = sorted(self.call_rate)[-tail:]
        return sum(self.call_rate[s] for s in steps) / len(steps)


def read_run(run_dir: str | Path) -> RunCurves:
    """The curves of the GRPO run at ``run_dir`` (its ``metrics.jsonl``)."""
    from dsm_engine.plotting import read_metrics

    rows = read_metrics(run_dir)

    def column(key: str, train_only: bool) -> dict[int, float]:
        return {
            int(r["step"]): float(r[key])
            for r in rows
            if key in r and not (train_only and int(r["step"]) == 0)
        }

    return RunCurves(
        heldout=column("eval_accuracy", False),
        sampled=column("accuracy", True),
        call_rate=column("tool/call_rate", True),
    )


@dataclass
class ToolProofResult:
    """Both runs' curves. tail: steps the late tool-call rate averages; margin: how far the
    tool run's final held-out accuracy must beat the no-tool run's; low: the most the no-tool
    run may reach (the operands are beyond what the model computes in its head)."""

    runs: dict[str, RunCurves]
    tail: int = 3
    margin: float = 0.2
    low: float = 0.1

    def final(self, run: str) -> float:
        """Held-out accuracy at the last evaluated step."""
        heldout = self.runs[run].heldout
        return heldout[max(heldout)]

    def start(self, run: str) -> float:
        """Held-out accuracy of the pretrained policy (step 0)."""
        return self.runs[run].heldout[min(self.runs[run].heldout)]

    def findings(self) -> list[tuple[str, bool]]:
        """The three claims, each as (sentence with its numbers, held)."""
        tools = self.runs["tools"]
        first, late = tools.first_rate(), tools.late_rate(self.tail)
        gap = self.final("tools") - self.final("no_tools")
        return [
            (
                f"the tool-call rate of the samples rises: {first:.2f} at step 1 -> {late:.2f} "
                f"(mean of the last {self.tail} steps)",
                late > first,
            ),
            (
                f"with the tool, held-out accuracy {self.start('tools'):.2f} -> "
                f"{self.final('tools'):.2f}; without it {self.start('no_tools'):.2f} -> "
                f"{self.final('no_tools'):.2f} (gap {gap:+.2f}, needed > {self.margin:.2f})",
                gap > self.margin,
            ),
            (
                f"without the tool the held-out accuracy stays low: at most "
                f"{max(self.runs['no_tools'].heldout.values()):.2f} (needed <= {self.low:.2f})",
                max(self.runs["no_tools"].heldout.values()) <= self.low,
            ),
        ]


def run_proof(
    root: str | Path, options: ToolProofOptions, *, resume: bool = False
) -> ToolProofResult:
    """Prepare the data and pretrain under ``root``, then GRPO with the tool
    (``root/grpo_tools``) and without it (``root/grpo_no_tools``) from the same checkpoint.
    ``resume``: continue a pretraining run already under ``root`` from its last checkpoint
    (the data order is fixed by the seed, so this is the same run as one from scratch)."""
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes import tool_arithmetic as task

    paths, eos = task.prepare(
        root, num_docs=options.num_docs, tool_fraction=options.tool_fraction, seed=options.seed
    )
    again = {"overwrite": False, "resume": "auto"} if resume else {}
    init = task.pretrain(
        paths, eos, steps=options.pretrain_steps, progress=options.progress, **again
    )
    destroy_parallel()
    for tools in (True, False):
        run_grpo(task.grpo_config(paths, init, tools=tools, **options.grpo_overrides()))
        destroy_parallel()
    return collect(root)


def collect(root: str | Path) -> ToolProofResult:
    """The curves of the two GRPO runs already under ``root``."""
    root = Path(root)
    return ToolProofResult(
        {"tools": read_run(root / "grpo_tools"), "no_tools": read_run(root / "grpo_no_tools")}
    )


def write_report(
    result: ToolProofResult,
    out_dir: str | Path,
    *,
    meta: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``tool_grpo.json`` (curves, findings, ``meta``), ``report.md`` (``meta`` on its
    first line, the tables, findings and ``notes``) and ``tool_grpo.png`` under ``out_dir``."""
    record = {
        "runs": {
            name: {key: {str(s): v for s, v in curve.items()} for key, curve in asdict(c).items()}
            for name, c in result.runs.items()
        },
        "findings": [{"finding": f, "held": held} for f, held in result.findings()],
    }
    out = write_report_files(
        out_dir,
        json_name="tool_grpo.json",
        record=record,
        title="GRPO with tool-integrated rollouts learns to call the tool (tool arithmetic)",
        body=render_markdown(result) + "".join(f"\n{n}\n" for n in notes),
        meta=meta,
    )
    plot(result, out / "tool_grpo.png")
    return out


def _row(label: str, curve: dict[int, float], steps: list[int]) -> str:
    return f"| {label} | " + " | ".join(f"{curve[s]:.2f}" if s in curve else "-" for s in steps)


def render_markdown(result: ToolProofResult) -> str:
    """Held-out accuracy by evaluated step, then sampled accuracy and tool-call rate by step,
    then the findings."""
    evals = sorted({s for c in result.runs.values() for s in c.heldout})
    lines = ["Held-out greedy accuracy:", ""]
    lines += ["| run | " + " | ".join(f"step {s}" for s in evals) + " |"]
    lines += ["|---|" + "---|" * len(evals)]
    lines += [_row(LABELS[n], c.heldout, evals) + " |" for n, c in result.runs.items()]
    steps = sorted({s for c in result.runs.values() for s in c.sampled})
    lines += ["", "Samples at each step (accuracy; tool-call rate):", ""]
    lines += ["| run | " + " | ".join(str(s) for s in steps) + " |"]
    lines += ["|---|" + "---|" * len(steps)]
    for name, c in result.runs.items():
        lines.append(_row(f"{LABELS[name]}: accuracy", c.sampled, steps) + " |")
        if c.call_rate:
            lines.append(_row(f"{LABELS[name]}: tool-call rate", c.call_rate, steps) + " |")
    lines += ["", "Findings (issue #19):", ""]
    lines += [f"- {f} - {'holds' if held else 'does not hold'}" for f, held in result.findings()]
    return "\n".join(lines) + "\n"


def plot(result: ToolProofResult, path: str | Path) -> Path:
    """Left: held-out accuracy of both runs; right: the tool run's tool-call rate and both
    runs' sampled accuracy, against the GRPO step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, c) in enumerate(result.runs.items()):
        steps = sorted(c.heldout)
        left.plot(steps, [c.heldout[s] for s in steps], "-o", color=f"C{i}", label=LABELS[name])
        steps = sorted(c.sampled)
        right.plot(
            steps,
            [c.sampled[s] for s in steps],
            ":",
            color=f"C{i}",
            label=f"{LABELS[name]}: sampled accuracy",
        )
        if c.call_rate:
            steps = sorted(c.call_rate)
            right.plot(
                steps,
                [c.call_rate[s] for s in steps],
                "-s",
                color=f"C{i}",
                markersize=3,
                label=f"{LABELS[name]}: tool-call rate",
            )
    left.set_ylabel("held-out greedy accuracy")
    right.set_ylabel("share of the step's samples")
    for ax in (left, right):
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("GRPO from one pretrained policy, with and without the Python tool")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
