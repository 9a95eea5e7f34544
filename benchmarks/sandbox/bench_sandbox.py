"""Sandbox throughput: programs per second on all cores, for a trivial program and for a
typical model-written solution, side by side with two common ways of running such code.

- ``dsm sandbox``: ``dsm_engine.sandbox.Sandbox``, one warm worker per core, every program
  in its own confined process (namespaces, Landlock, rlimits).
- ``fresh interpreter``: ``python -c`` per program (process isolation only, no limits but a
  timeout), as many at once as there are cores.
- ``multiprocessing pool``: ``exec`` in warm ``multiprocessing`` workers (no isolation at all:
  a program can damage the worker and every later program; the upper bound on speed).

    python -P benchmarks/sandbox/bench_sandbox.py [--programs 400] [--repeats 3]

Writes ``benchmarks/results/sandbox_throughput.{json,md}`` (median of the repeats, with the
machine, load, versions and commit).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"

# every program of a batch differs ({i}), as model-written ones do: no runner can answer
# from a cache filled by an earlier, identical program
PROGRAMS = {
    "trivial": "print({i} + 1)\n",
    # the shape of a program-of-thought answer to a MATH question
    "typical solution": (
        "import sympy as sp\n\n"
        "x = sp.symbols('x')\n"
        "roots = sp.solve(x**2 - {i}*x + 10, x)\n"
        "total = sum(roots) / {i}\n"
        "print(sp.latex(sp.nsimplify(total)))\n"
    ),
}


def batch(code: str, n: int, first: int = 1) -> list[str]:
    return [code.format(i=i) for i in range(first, first + n)]


def _exec_in_pool(code: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def _warm_pool_worker() -> None:
    import numpy  # noqa: F401
    import sympy  # noqa: F401


def run_dsm_sandbox(code: str, n: int, cores: int) -> float:
    from dsm_engine.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(workers=cores)) as box:
        box.run_many(batch(code, cores, first=10**6))  # warm-up: every worker has forked once
        start = time.perf_counter()
        results = box.run_many(batch(code, n))
        elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), {r.error for r in results}
    return n / elapsed


def run_fresh_interpreter(code: str, n: int, cores: int) -> float:
    def one(program: str) -> None:
        subprocess.run(
            [sys.executable, "-P", "-c", program], capture_output=True, check=True, timeout=60
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(one, batch(code, n)))
    return n / (time.perf_counter() - start)


def run_multiprocessing_pool(code: str, n: int, cores: int) -> float:
    with get_context("fork").Pool(cores, initializer=_warm_pool_worker) as pool:
        pool.map(_exec_in_pool, batch(code, cores, first=10**6))
        start = time.perf_counter()
        pool.map(_exec_in_pool, batch(code, n), chunksize=1)
        return n / (time.perf_counter() - start)


def machine_info(protections: tuple[str, ...]) -> dict:
    from importlib import metadata

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    versions = {}
    for dist in ("dsm-engine", "landlockpy", "sympy", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores_used": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_commit": commit,
        "versions": versions,
        "sandbox_protections": list(protections),
    }


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Sandbox throughput (programs per second, all cores)",
        "",
        f"{m['date']} · {m['cpu']} ({m['cores_used']} cores, load {m['load_average_1m']}) · "
        f"Python {m['python']} · Linux {m['kernel']} · commit {m['git_commit'] or '?'}",
        "",
        "| program | runner | programs | programs/s (median) | repeats |",
        "|---|---|---:|---:|---|",
    ]
    for row in result["rows"]:
        runs = ", ".join(f"{r:.1f}" for r in row["runs"])
        lines.append(
            f"| {row['program']} | {row['runner']} | {row['programs']} | "
            f"{row['programs_per_s']:.1f} | {runs} |"
        )
    lines += ["", *[f"- {note}" for note in result["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=400, help="programs per measured batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    from dsm_engine.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(workers=1)) as box:
        protections = box.protections
    runners = {
        "dsm sandbox": (run_dsm_sandbox, args.programs),
        # a fresh interpreter that imports sympy costs ~1 s: fewer programs, same rate
        "fresh interpreter": (run_fresh_interpreter, max(cores, args.programs // 10)),
        "multiprocessing pool (no isolation)": (run_multiprocessing_pool, args.programs),
    }
    rows = []
    for program, code in PROGRAMS.items():
        for runner, (fn, n) in runners.items():
            runs = [fn(code, n, cores) for _ in range(args.repeats)]
            rows.append(
                {
                    "program": program,
                    "runner": runner,
                    "programs": n,
                    "programs_per_s": statistics.median(runs),
                    "runs": runs,
                }
            )
            print(f"{program:18s} {runner:38s} {statistics.median(runs):8.1f} programs/s")
    by = {(r["program"], r["runner"]): r["programs_per_s"] for r in rows}
    notes = [
        f"dsm sandbox vs a fresh interpreter per program: "
        f"{by[('typical solution', 'dsm sandbox')] / by[('typical solution', 'fresh interpreter')]:.1f}x "
        "on the typical solution (sympy and numpy are imported once per worker, not per program)",
        "the multiprocessing pool runs programs in its own workers with no limits or isolation "
        "(and keeps sympy's caches from one program to the next): it is the cost floor, not an "
        "alternative",
        "the sandbox's workers run sympy once at start (SandboxConfig.warmup) so that what sympy "
        "loads lazily is not loaded again by every program",
        "each rate is the median of the repeats; the machine is shared (see the load average)",
    ]
    result = {"machine": machine_info(protections), "rows": rows, "notes": notes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sandbox_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sandbox_throughput.md").write_text(to_markdown(result))
    print(f"wrote {out / 'sandbox_throughput.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
