"""Figure 5 of the paper on the engine: RFT, Online RFT and GRPO (outcome / process
supervision) trained from the same policy on the tiny arithmetic task.

``method_config`` builds each method's run from the arithmetic recipe
(``dsm_engine.recipes.arithmetic``): every method gets the same sample budget (steps x
prompts per step x group size), the same data, peak learning rate, schedule and sampling
temperature; what differs is the ``algorithm:`` section and the reward:

* ``rft``: SFT on the correct samples of π_sft (the sampler keeps the initial weights, so
  the data is rejection-sampled offline from the pretrained policy);
* ``online_rft``: the same, sampled from the current policy (synced after every update);
* ``grpo_outcome``: GRPO with the verifier's reward (``grpo_config``);
* ``grpo_process``: GRPO with per-step advantages from a PRM (``prm_grpo_config``, whose
  docstring explains its β = 1.0).

``run_methods`` trains them and reads each run's held-out greedy accuracy (``eval_accuracy``
in ``metrics.jsonl``) into a ``ParadigmResult``; ``write_report`` writes ``paradigm.json``,
``report.md`` and ``paradigm.png`` and checks the paper's findings (§5.2.1): Online RFT > RFT,
GRPO > Online RFT, process supervision >= outcome supervision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsm_engine.recipes.arithmetic import DemoPaths, grpo_config, prm_grpo_config
from dsm_engine.recipes.report_files import write_report_files

METHODS: tuple[str, ...] = ("rft", "online_rft", "grpo_outcome", "grpo_process")
LABELS: dict[str, str] = {
    "rft": "RFT",
    "online_rft": "Online RFT",
    "grpo_outcome": "GRPO+OS",
    "grpo_process": "GRPO+PS",
}
# The paper's three qualitative findings: (better, worse, strict). strict=False: ">=" holds
# within the tolerance.
FINDINGS: tuple[tuple[str, str, bool], ...] = (
    ("online_rft", "rft", True),
    ("grpo_outcome", "online_rft", True),
    ("grpo_process", "grpo_outcome", False),
)


@dataclass(frozen=True)
class ParadigmOptions:
    """The shared budget of every method: ``steps`` x ``prompts_per_step`` x ``group_size``
    samples. eval_every / eval_prompts: the held-out greedy evaluation. tail: how many of the
    last evaluations the findings average (one evaluation is noisy)."""

    steps: int = 90
    prompts_per_step: int = 16
    group_size: int = 8
    eval_every: int = 10
    eval_prompts: int = 200
    tail: int = 3
    progress: bool = False

    def __post_init__(self) -> None:
        if min(self.steps, self.prompts_per_step, self.group_size, self.eval_every) < 1:
            raise ValueError(f"steps, prompts, group size and eval_every must be >= 1: {self}")
        if self.tail < 1:
            raise ValueError(f"tail must be >= 1, got {self.tail}")

    @property
    def samples(self) -> int:
        """Sampled responses of one run."""
        return self.steps * self.prompts_per_step * self.group_size


def method_config(
    method: str,
    paths: DemoPaths,
    init: Path,
    options: ParadigmOptions,
    run_dir: Path,
    prms: Sequence[Path] = (),
):
    """The GRPO-trainer config of ``method`` (one of ``METHODS``) from the policy at ``init``;
    ``prms``: the PRM checkpoint(s) of ``grpo_process``."""
    shared: dict[str, Any] = {
        "run_dir": str(run_dir),
        "grpo": {
            "steps": options.steps,
            "prompts_per_step": options.prompts_per_step,
            "group_size": options.group_size,
        },
        "eval": {"every": options.eval_every, "num_prompts": options.eval_prompts},
        "logging": {"tensorboard": False, "progress": options.progress},
    }
    if method in ("rft", "online_rft"):
        shared["algorithm"] = {"name": method}
        shared["grpo"] = {**shared["grpo"], "mu": 1, "old_logp": "recompute"}
        return grpo_config(paths, init, **shared)
    if method == "grpo_outcome":
        return grpo_config(paths, init, **shared)
    if method == "grpo_process":
        if not prms:
            raise ValueError("grpo_process needs a PRM checkpoint")
        return prm_grpo_config(paths, init, list(prms), **shared)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def run_budget(run_dir: str | Path) -> int:
    """Responses the run at ``run_dir`` sampled: the last step in its ``metrics.jsonl``
    (every step is logged) x prompts per step x group size of its saved ``config.yaml``; a
    run cut short shows a smaller budget."""
    import yaml

    from dsm_engine.plotting import read_metrics

    g = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["grpo"]
    done = max((int(r["step"]) for r in read_metrics(run_dir)), default=0)
    return done * int(g["prompts_per_step"]) * int(g["group_size"])


def read_curve(run_dir: str | Path) -> dict[int, float]:
    """Held-out accuracy by step from ``<run_dir>/metrics.jsonl`` (step 0: the start)."""
    from dsm_engine.plotting import read_metrics

    rows = read_metrics(run_dir)
    return {int(r["step"]): float(r["eval_accuracy"]) for r in rows if "eval_accuracy" in r}


@dataclass
class ParadigmResult:
    """Each method's held-out accuracy curve, its sample budget, and the PRM's metrics."""

    curves: dict[str, dict[int, float]]  # method -> step -> held-out accuracy
    budgets: dict[str, int]  # method -> sampled responses
    tail: int = 3
    prm_metrics: dict[str, float] = field(default_factory=dict)

    def final(self, method: str) -> float:
        """Accuracy at the last evaluated step."""
        curve = self.curves[method]
        return curve[max(curve)]

    def late(self, method: str) -> float:
        """Mean accuracy over the last ``tail`` evaluations."""
        curve = self.curves[method]
        steps = sorted(curve)[-self.tail :]
        return sum(curve[s] for s in steps) / len(steps)

    def findings(self, tolerance: float = 0.02) -> list[tuple[str, bool]]:
        """Each of the paper's findings present in ``curves``, as (sentence, held), judged
        on ``late``; ``tolerance``: a gap smaller than this counts as a tie."""
        out = []
        for better, worse, strict in FINDINGS:
            if better not in self.curves or worse not in self.curves:
                continue
            gap = self.late(better) - self.late(worse)
            held = gap > tolerance if strict else gap >= -tolerance
            relation = ">" if strict else ">="
            out.append(
                (
                    f"{LABELS[better]} {relation} {LABELS[worse]}: "
                    f"{100 * self.late(better):.1f}% vs {100 * self.late(worse):.1f}% "
                    f"(mean of the last {self.tail} evaluations, gap {100 * gap:+.1f} points; "
                    f"final {100 * self.final(better):.1f}% vs {100 * self.final(worse):.1f}%)"
                    f" - {'matches' if held else 'does not match'} the paper",
                    held,
                )
            )
        return out


def run_methods(
    paths: DemoPaths,
    init: Path,
    root: str | Path,
    options: ParadigmOptions,
    *,
    prms: Sequence[Path] = (),
    methods: Sequence[str] = METHODS,
) -> ParadigmResult:
    """Train each of ``methods`` from ``init`` under ``root/<method>``; their curves."""
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel

    for method in methods:
        run_grpo(method_config(method, paths, init, options, Path(root) / method, prms))
        destroy_parallel()
    return collect(root, options, methods=methods)


def collect(
    root: str | Path, options: ParadigmOptions, *, methods: Sequence[str] = METHODS
) -> ParadigmResult:
    """The curves of runs already under ``root/<method>`` (e.g. trained by separate
    processes), each budget read from the run's own ``config.yaml``."""
    curves = {m: read_curve(Path(root) / m) for m in methods}
    budgets = {m: run_budget(Path(root) / m) for m in methods}
    return ParadigmResult(curves, budgets, tail=options.tail)


def write_report(
    result: ParadigmResult,
    out_dir: str | Path,
    *,
    meta: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``paradigm.json`` (curves, budgets, findings, ``meta``), ``report.md`` (``meta``
    on its first line, then the table, findings and ``notes``) and ``paradigm.png`` under
    ``out_dir``; returns ``out_dir``."""
    record = {
        "budgets": result.budgets,
        "tail": result.tail,
        "prm_metrics": result.prm_metrics,
        "curves": {m: {str(s): a for s, a in c.items()} for m, c in result.curves.items()},
        "findings": [{"finding": f, "held": held} for f, held in result.findings()],
    }
    out = write_report_files(
        out_dir,
        json_name="paradigm.json",
        record=record,
        title="Figure 5: RFT, Online RFT, GRPO+OS and GRPO+PS on the arithmetic task",
        body=render_markdown(result) + "".join(f"\n{n}\n" for n in notes),
        meta=meta,
    )
    plot(result, out / "paradigm.png")
    return out


def render_markdown(result: ParadigmResult) -> str:
    """Held-out accuracy (percent) by step, one row per method, then the findings."""
    steps = sorted({s for c in result.curves.values() for s in c})
    lines = [
        "| method | samples | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for method, curve in result.curves.items():
        cells = " | ".join(f"{100 * curve[s]:.1f}" if s in curve else "-" for s in steps)
        lines.append(f"| {LABELS.get(method, method)} | {result.budgets[method]} | {cells} |")
    lines += ["", "Findings (paper, §5.2.1):", ""]
    lines += [f"- {f}" for f, _ in result.findings()]
    if result.prm_metrics:
        prm = ", ".join(f"{k} {v:.3f}" for k, v in result.prm_metrics.items())
        lines += ["", f"PRM of GRPO+PS (held-out step labels): {prm}"]
    return "\n".join(lines) + "\n"


def plot(result: ParadigmResult, path: str | Path) -> Path:
    """Held-out accuracy against training step, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (method, curve) in enumerate(result.curves.items()):
        steps = sorted(curve)
        ax.plot(
            steps,
            [100 * curve[s] for s in steps],
            "-o",
            color=f"C{i}",
            markersize=3,
            label=LABELS.get(method, method),
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title("RFT, Online RFT and GRPO from the same policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def options_record(options: ParadigmOptions) -> dict[str, Any]:
    """``options`` as JSON-able settings, with the sample budget."""
    return {**asdict(options), "samples": options.samples}
