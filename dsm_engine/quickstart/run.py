"""``dsm quickstart [--out DIR] [--minutes N]``: mine, pretrain, GRPO, evaluate, report.

Stages run in order; each writes ``DIR/stages/<stage>.done.json`` when it has finished. Ctrl-C
(or a kill) leaves the folder resumable: the same command skips finished stages and the
interrupted one continues from its own saved state. Everything a stage prints besides its
progress bar goes to ``DIR/logs/<stage>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsm_engine.config import ConfigError
from dsm_engine.folder_lock import FolderLock, FolderLockedError
from dsm_engine.quickstart import evaluate, stages
from dsm_engine.quickstart.budget import budget_for
from dsm_engine.quickstart.state import QuickstartError, RunState

StageFn = Callable[[stages.Context], dict[str, Any]]

STAGES: list[tuple[str, str, StageFn]] = [
    ("data", "mine math pages, decontaminate", stages.stage_data),
    ("corpus", "tokenizer, tokenised corpus, RL problems", stages.stage_corpus),
    ("pretrain", "pretrain the tiny model", stages.stage_pretrain),
    ("eval_before", "evaluate before GRPO", evaluate.stage_eval_before),
    ("grpo", "GRPO with the verifier reward", stages.stage_grpo),
    ("eval_after", "evaluate after GRPO", evaluate.stage_eval_after),
]


def default_data_dir() -> Path:
    """``shared/data`` beside the checkout (the WARC samples and benchmarks)."""
    import dsm_engine

    return Path(dsm_engine.__file__).resolve().parents[1].parent / "shared" / "data"


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the trainers run as children)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_quickstart(
    out: str | Path,
    minutes: float = 15,
    data_dir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after: str | None = None,
) -> Path:
    """Run (or resume) every stage into ``out``; returns the path of ``report.md``.

    ``stop_after``: end after this stage (its marker written), for partial runs. ``out`` is
    locked while it runs: a second quickstart on it raises FolderLockedError naming this one.
    """
    with FolderLock(out):
        return _run_stages(Path(out), minutes, data_dir, progress=progress, stop_after=stop_after)


def _run_stages(
    out: Path,
    minutes: float,
    data_dir: str | Path | None,
    *,
    progress: bool,
    stop_after: str | None,
) -> Path:
    from rich.console import Console

    from dsm_engine.quickstart.report import write_report

    console = Console()
    data = Path(data_dir) if data_dir else default_data_dir()
    for sub in ("warc", "benchmarks"):
        if not (data / sub).is_dir():
            raise QuickstartError(f"--data-dir {data}: no {sub}/ folder (the shipped data)")
    budget = budget_for(minutes)
    state = RunState(out)
    settings = {"minutes": float(minutes), "data_dir": str(data.resolve())}
    resumed = state.check_settings(settings)
    ctx = stages.Context(out=out, budget=budget, data_dir=data, progress=progress)
    if resumed:
        console.print(f"[bold]resuming[/] {out}")
    names = [name for name, _, _ in STAGES]
    if stop_after is not None and stop_after not in names:
        raise ConfigError(f"stop_after: unknown stage {stop_after!r} (stages: {', '.join(names)})")
    for i, (name, title, fn) in enumerate(STAGES, 1):
        header = f"[{i}/{len(STAGES)}] {name}: {title}"
        done = state.done(name)
        if done is not None:
            console.print(f"[dim]{header}: done ({done['wall_s']:.0f} s), skipped[/]")
        else:
            console.rule(header)
            wall, cpu = time.perf_counter(), _cpu_seconds()
            with open(ctx.log_path(name), "a") as log, contextlib.redirect_stderr(log):
                info = fn(ctx)
            state.mark(
                name, wall_s=time.perf_counter() - wall, cpu_s=_cpu_seconds() - cpu, info=info
            )
            console.print(f"{header}: finished in {time.perf_counter() - wall:.0f} s")
        if name == stop_after:
            return out / "report.md"
    console.rule(f"[{len(STAGES) + 1}/{len(STAGES) + 1}] report")
    report = write_report(ctx, [(n, t) for n, t, _ in STAGES], dataclasses.asdict(budget))
    console.print(f"report: {report} (and {report.with_suffix('.html')})")
    return report


def main(argv: list[str]) -> int:
    """Entry point of ``dsm quickstart``."""
    ap = argparse.ArgumentParser(
        prog="dsm quickstart",
        description="Mine math pages, pretrain a tiny model, GRPO, evaluate and write a report.",
    )
    ap.add_argument("--out", default="runs/quickstart", help="run folder (rerun to resume)")
    ap.add_argument("--minutes", type=float, default=15, help="time budget on 2 CPU cores (sizes)")
    ap.add_argument("--data-dir", default=None, help="shared data folder (warc/, benchmarks/)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        run_quickstart(args.out, args.minutes, args.data_dir, progress=not args.no_progress)
    except (QuickstartError, ConfigError, FileNotFoundError, FolderLockedError) as e:
        print(f"dsm quickstart: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun with --out {args.out} to resume", file=sys.stderr)
        return 130
    return 0
