"""``dsm plot RUN``: draw a run's curves from ``RUN/metrics.jsonl`` to PNG files.

One PNG per panel present in the metrics: reward (mean and accuracy), KL, held-out accuracy
and loss. Written next to the metrics (or under ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsm_engine.jsonl import iter_jsonl

# panel name -> metric names drawn in it (a panel is drawn when one of them is present)
PANELS: dict[str, tuple[str, ...]] = {
    "reward": ("reward_mean", "accuracy"),
    "kl": ("kl_mean",),
    "eval_accuracy": ("eval_accuracy", "eval_sampled_accuracy"),
    "loss": ("loss",),
}


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of ``run_dir/metrics.jsonl`` (raises FileNotFoundError naming the file)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} a run folder?)")
    return [row for _, row in iter_jsonl(path)]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every panel with data; returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for panel, names in PANELS.items():
        series = {n: [(r["step"], r[n]) for r in rows if n in r and "step" in r] for n in names}
        series = {n: pts for n, pts in series.items() if pts}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, pts in series.items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, label=name)
        ax.set_xlabel("step")
        ax.set_title(f"{Path(run_dir).name}: {panel}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{panel}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """Entry point of ``dsm plot RUN [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="dsm plot", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the run)")
    args = parser.parse_args(argv)
    try:
        paths = plot_run(args.run, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"dsm plot: error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print(
            f"dsm plot: error: {args.run}/metrics.jsonl has none of {sorted(PANELS)}",
            file=sys.stderr,
        )
        return 2
    for p in paths:
        print(p)
    return 0
