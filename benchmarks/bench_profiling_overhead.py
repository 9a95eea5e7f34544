"""Step-time cost of the ``profile`` section: a tiny CPU pretraining run, profiling off vs on.

Usage::

    python -P benchmarks/bench_profiling_overhead.py [--repeats 16] [--steps 20] [--warmup 4]

Each repeat runs the real pretraining loop (``run_pretrain``: data, megatron-core
forward-backward, optimizer, metrics) once with ``profile.enabled=false`` and once with
``profile.enabled=true`` (memory on, no ``torch.profiler`` trace), in alternating order so that
drifts of a shared machine's load hit both alike. A run's step time is the median over its steps
after ``--warmup`` of two clocks: wall (``step_time_s``, which spans the phases, so it includes
the profiler's own work) and the process's CPU time from one step's end to the next (everything
the step did, ``end_step`` included; less disturbed by other processes on a shared machine). The
overhead is the median over repeats of on/off - 1 of paired runs. Off, the profiler's only cost
is one method call per phase returning a shared do-nothing context; a micro-benchmark of that
call (and of an enabled phase) puts it next to the step time. Results go to
``benchmarks/results/profiling_overhead.{md,json}`` (``--out``: another folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, run_info, write_results  # noqa: E402

MODEL = {
    "num_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "ffn_hidden_size": 384,
    "vocab_size": 512,
    "seq_length": 64,
}
PHASES_PER_STEP = 3  # data, forward_backward, optimizer (no checkpoint in the timed steps)


def _random_tokens(prefix: Path, vocab: int, n_tokens: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for _ in range(n_tokens // 4096 + 1):
        builder.add_item(torch.from_numpy(rng.integers(0, vocab, 4096, dtype=np.int64)))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")


def _run(root: Path, data: Path, steps: int, profile: bool) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each step of one pretraining run after the first (CPU: the
    process's CPU time between consecutive step ends, which a loaded machine disturbs less)."""
    from dsm_engine.config import from_dict
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.trainers.config import PretrainConfig
    from dsm_engine.trainers.pretrain import run_pretrain

    cfg = from_dict(
        PretrainConfig,
        {
            "run_dir": str(root / ("on" if profile else "off")),
            "overwrite": True,
            "model": dict(MODEL),
            "data": {"paths": [str(data)], "eod_token_id": 0},
            "train": {"steps": steps, "micro_batch_size": 8, "global_batch_size": 16},
            "checkpoint": {"every": steps + 1},  # only the final save, after the timed steps
            "logging": {"tensorboard": False, "progress": False},
            "profile": {"enabled": profile},
        },
    )
    wall: list[float] = []
    cpu: list[float] = []

    def on_step_end(_step: int, m: dict[str, float]) -> None:
        wall.append(m["step_time_s"])
        cpu.append(time.process_time())

    try:
        run_pretrain(cfg, on_step_end=on_step_end)
    finally:
        destroy_parallel()
    return wall[1:], [b - a for a, b in zip(cpu, cpu[1:])]


def _phase_call_us(root: Path) -> dict[str, float]:
    """Microseconds per ``with prof.phase(name): pass``, off and on (CPU, memory on and off)."""
    from dsm_engine.trainers.profiling import ProfileConfig, StepProfiler

    out = {}
    cpu = torch.device("cpu")
    for label, cfg in [
        ("off", ProfileConfig()),
        ("on_no_memory", ProfileConfig(enabled=True, memory=False)),
        ("on", ProfileConfig(enabled=True)),
    ]:
        with StepProfiler(cfg, run_dir=root / f"micro_{label}", device=cpu) as prof:

            def one(prof: StepProfiler = prof) -> None:
                with prof.phase("x"):
                    pass

            n = 200_000 if label == "off" else 5_000
            prof.begin_step(1)
            best = min(timeit.repeat(one, number=n, repeat=5)) / n
            out[label] = best * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = run_info(("megatron-core",))
    root = Path(tempfile.mkdtemp(prefix="dsm_profiling_bench_"))
    data = root / "tokens"
    _random_tokens(data, MODEL["vocab_size"], args.steps * 16 * (MODEL["seq_length"] + 1) * 2)

    medians: dict[tuple[str, str], list[float]] = {}
    began = time.time()
    for r in range(args.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for profile in order:
            wall, cpu = _run(root, data, args.steps, profile)
            mode = "on" if profile else "off"
            for clock, xs in (("wall", wall), ("cpu", cpu)):
                kept = xs[args.warmup - 1 :]  # the lists start at step 2
                medians.setdefault((clock, mode), []).append(statistics.median(kept))
    micro = _phase_call_us(root)
    off_step = statistics.median(medians[("wall", "off")])
    rows = []
    for clock in ("wall", "cpu"):
        for mode in ("off", "on"):
            ms = medians[(clock, mode)]
            rows.append(
                {
                    "mode": mode,
                    "clock": clock,
                    "median_step_ms": statistics.median(ms) * 1e3,
                    "min_run_ms": min(ms) * 1e3,
                    "max_run_ms": max(ms) * 1e3,
                    "runs": len(ms),
                }
            )
        on, off = medians[(clock, "on")], medians[(clock, "off")]
        ratios = [a / b - 1 for a, b in zip(on, off)]
        rows.append(
            {
                "mode": "on vs off (paired runs)",
                "clock": clock,
                "overhead_median_pct": 100 * statistics.median(ratios),
                "overhead_min_pct": 100 * min(ratios),
                "overhead_max_pct": 100 * max(ratios),
            }
        )
    for label, us in micro.items():
        rows.append(
            {
                "mode": f"phase() call, {label}",
                "us_per_phase": us,
                "pct_of_off_step": 100 * us * 1e-6 * PHASES_PER_STEP / off_step,
            }
        )
    notes = [
        f"model {MODEL}, global batch 16 (2 microbatches of 8), fp32, CPU, "
        f"torch threads {args.threads}; {args.steps} steps per run, first {args.warmup} dropped; "
        f"{args.repeats} repeats per mode, alternating order; {time.time() - began:.0f} s in all",
        "on = profile.enabled=true with memory (per-phase peak RSS via /proc/self/clear_refs), "
        "no torch.profiler trace",
        "clock wall: step_time_s (spans the phases); clock cpu: process CPU time from one step's "
        "end to the next (includes the profiler's end_step and phases.jsonl write)",
        f"pct_of_off_step: the micro-benchmarked cost of {PHASES_PER_STEP} phase() calls per step "
        "over the median off step",
    ]
    write_results("profiling_overhead", rows, env, notes, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
