"""``dsm profile RUN_DIR``: the phase table and a one-step timeline of a profiled run.

Reads ``RUN_DIR/profile/phases.jsonl`` (written by :class:`~dsm_engine.trainers.profiling.
StepProfiler` when ``profile.enabled=true``), prints each phase's mean, p50 and p95 seconds, its
share of the mean step and its peak memory, and draws one step's phases in the order they ran
to ``RUN_DIR/profile/timeline.png``. The same per-step numbers are in ``metrics.jsonl`` and
TensorBoard as ``time/<phase>_s``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from dsm_engine.jsonl import iter_jsonl
from dsm_engine.trainers.profiling import PHASES_FILE, PROFILE_DIR


class ProfileDataError(ValueError):
    """The run folder is missing or holds no profiling data."""


@dataclass(frozen=True)
class PhaseStats:
    """One phase over the steps read: seconds per step (summed when it ran several times in a
    step; 0 in steps without it), its share of the mean step, its peak memory (MiB or None)."""

    name: str
    mean_s: float
    p50_s: float
    p95_s: float
    share: float
    peak_mib: float | None


def read_phases(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/profile/phases.jsonl``, or :class:`ProfileDataError` saying why not."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ProfileDataError(f"{run} does not exist or is not a run folder")
    path = run / PROFILE_DIR / PHASES_FILE
    rows = [row for _, row in iter_jsonl(path)] if path.is_file() else []
    if not rows:
        raise ProfileDataError(
            f"{run} has no profiling data ({path} is missing or empty); "
            "train with profile.enabled=true"
        )
    return rows


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of a non-empty list."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def phase_stats(rows: list[dict]) -> list[PhaseStats]:
    """Per-phase statistics in the order phases first ran, then ``other`` and ``step``."""
    names: list[str] = []
    per_step: list[dict[str, float]] = []
    peaks: dict[str, float] = {}
    for row in rows:
        totals: dict[str, float] = {}
        for p in row["phases"]:
            name = p["name"]
            if name not in names:
                names.append(name)
            totals[name] = totals.get(name, 0.0) + p["dur_s"]
            if p.get("peak_mib") is not None:
                peaks[name] = max(peaks.get(name, 0.0), p["peak_mib"])
        totals["other"] = max(row["step_s"] - sum(totals.values()), 0.0)
        totals["step"] = row["step_s"]
        per_step.append(totals)
    mean_step = sum(t["step"] for t in per_step) / len(per_step)
    out = []
    for name in [*names, "other", "step"]:
        xs = [t.get(name, 0.0) for t in per_step]
        mean = sum(xs) / len(xs)
        peak = max(peaks.values()) if name == "step" and peaks else peaks.get(name)
        out.append(
            PhaseStats(
                name,
                mean,
                _quantile(xs, 0.5),
                _quantile(xs, 0.95),
                mean / mean_step if mean_step > 0 else 0.0,
                peak,
            )
        )
    return out


def print_table(stats: list[PhaseStats], title: str) -> None:
    """The phase table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("phase", "mean s", "p50 s", "p95 s", "share", "peak MiB"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for s in stats:
        peak = "-" if s.peak_mib is None else f"{s.peak_mib:,.0f}"
        table.add_row(
            s.name, f"{s.mean_s:.4f}", f"{s.p50_s:.4f}", f"{s.p95_s:.4f}", f"{s.share:.1%}", peak
        )
    Console(width=120).print(table)


def draw_timeline(row: dict, path: Path) -> Path:
    """One step's phases as a Gantt chart: a lane per phase, bars at their start offsets and
    durations, lanes in the order the phases first ran (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p["name"] for p in row["phases"]))
    lane = {n: i for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * len(names)))
    totals: dict[str, float] = {}
    for p in row["phases"]:
        color = plt.cm.tab10(lane[p["name"]] % 10)
        ax.broken_barh([(p["start_s"], p["dur_s"])], (lane[p["name"]] - 0.4, 0.8), color=color)
        totals[p["name"]] = totals.get(p["name"], 0.0) + p["dur_s"]
    for n, i in lane.items():
        end = max(p["start_s"] + p["dur_s"] for p in row["phases"] if p["name"] == n)
        ax.text(end, i, f" {totals[n] * 1e3:.1f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, row["step_s"] * 1.12)  # room for the last label
    ax.axvline(row["step_s"], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("seconds since the step started (dashed: the step's end)")
    ax.set_title(f"step {row['step']}: {row['step_s']:.3f} s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    """Entry point of ``dsm profile RUN_DIR [--step N] [--skip K] [--out PNG]``."""
    parser = argparse.ArgumentParser(
        prog="dsm profile", description="Phase times of a run trained with profile.enabled=true."
    )
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int, help="step drawn in the timeline (default: last)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first K steps (warm-up)")
    parser.add_argument("--out", help="timeline PNG (default RUN_DIR/profile/timeline.png)")
    args = parser.parse_args(argv)
    try:
        rows = read_phases(args.run_dir)
        kept = rows[args.skip :]
        if not kept:
            raise ProfileDataError(f"--skip {args.skip} leaves none of the {len(rows)} steps")
        if args.step is None:
            row = kept[-1]
        else:
            row = next((r for r in rows if r["step"] == args.step), None)
            if row is None:
                raise ProfileDataError(f"--step {args.step}: not among the profiled steps")
    except ProfileDataError as e:
        print(f"dsm profile: error: {e}", file=sys.stderr)
        return 2
    first, last = kept[0]["step"], kept[-1]["step"]
    print_table(phase_stats(kept), f"{args.run_dir}: steps {first}-{last} ({len(kept)})")
    out = Path(args.out) if args.out else Path(args.run_dir) / PROFILE_DIR / "timeline.png"
    print(f"timeline of step {row['step']}: {draw_timeline(row, out)}")
    return 0
