"""The caller's side of the sandbox: a pool of warm worker processes and their results.

``Sandbox(config).run_many(programs)`` hands programs to ``config.workers`` workers (default:
one per core) and returns one :class:`ExecResult` per program, in order. Each worker forks a
fresh confined process per program (``_worker.py``); the pool adds a last line of defence: a
worker that does not answer within the program's time limit plus a grace period is killed
and replaced, and its program is reported as ``sandbox_error``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

__all__ = ["STATUSES", "ExecResult", "Sandbox", "SandboxConfig", "SandboxError"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

# ok: exit code 0; error: an exception or a non-zero exit; timeout: wall-clock or CPU limit;
# memory: the memory limit; output_limit: too much printed; crashed: killed by a signal
# (stack overflow, ...); sandbox_error: the sandbox itself failed (never the program's fault)
STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "crashed", "sandbox_error")


class SandboxError(RuntimeError):
    """The sandbox could not start, or lacks a protection that ``config.require`` names."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of every program and the shape of the worker pool.

    timeout_s: wall-clock limit per program (seconds).
    cpu_s: CPU-time limit per program (default: ``timeout_s`` rounded up).
    memory_mb: address-space limit of a program process (includes the ~0.5 GiB that the
        preloaded numpy and sympy map).
    output_bytes: stdout + stderr above this ends the program (``output_limit``).
    scratch_mb: size of the program's scratch folder (a tmpfs where mount namespaces work)
        and the largest file it may write.
    max_procs: process-count limit (``RLIMIT_NPROC``): bounds a fork bomb before its timeout.
    workers: worker processes (0: one per available core).
    preload: modules imported once per worker, so programs import them for free.
    warmup: trusted code each worker runs once after ``preload`` (before any isolation): it
        loads what libraries import lazily on first use (sympy's solvers, printers), which
        every program would otherwise load again.
    require: protections that must be active (names as in ``Sandbox.protections``, matched
        by prefix), else ``start`` raises ``SandboxError``.
    landlock: use Landlock where the kernel has it (off only to test the other layers alone).
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 2048
    output_bytes: int = 64_000
    scratch_mb: int = 16
    max_procs: int = 32
    workers: int = 0
    preload: tuple[str, ...] = ("math", "fractions", "itertools", "sympy", "numpy")
    warmup: str = (
        "import sympy as sp\n"
        "x, y = sp.symbols('x y')\n"
        "sp.latex(sp.solve([x**2 + y - 3, x - y + 1], [x, y]))\n"
        "sp.latex(sp.simplify(sp.sin(x)**2 + sp.cos(x)**2 + sp.sqrt(8) / sp.Rational(2, 3)))\n"
        "sp.factor(x**3 - 1), sp.expand((x + 1)**3), sp.integrate(x**2, (x, 0, 1))\n"
        "sp.nsimplify(0.5), sp.N(sp.pi, 20), sp.isprime(97), sp.binomial(10, 3)\n"
    )
    require: tuple[str, ...] = ()
    landlock: bool = True

    def __post_init__(self) -> None:
        positive = ("timeout_s", "memory_mb", "output_bytes", "scratch_mb", "max_procs")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"SandboxConfig.cpu_s must be > 0, got {self.cpu_s}")
        if self.workers < 0:
            raise ValueError(f"SandboxConfig.workers must be >= 0, got {self.workers}")


@dataclass
class ExecResult:
    """What one program did.

    status: one of ``STATUSES``.
    stdout, stderr: what it printed (UTF-8; undecodable bytes replaced), at most
        ``output_bytes`` each.
    error: one line saying why it failed (``""`` when ``status == "ok"``), e.g.
        ``NameError: name 'x' is not defined`` or ``TimeoutError: program ran past 10 s``.
    exit_code: the process's exit code (None when killed by a signal).
    wall_s: wall-clock seconds from fork to the end of the program.
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def _settings(config: SandboxConfig) -> dict:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {
        "timeout_s": config.timeout_s,
        "cpu_s": config.cpu_s or math.ceil(config.timeout_s),
        "memory_mb": config.memory_mb,
        "output_bytes": config.output_bytes,
        "scratch_mb": config.scratch_mb,
        "max_procs": config.max_procs,
        "preload": list(config.preload),
        "warmup": config.warmup,
        "landlock": config.landlock,
        # a fixed hash seed: a program printing a set prints it the same way every run
        "env": {**threads, "PYTHONHASHSEED": "0"},
    }


class _Worker:
    """One worker process and its pipes."""

    _LAUNCH = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from dsm_engine.sandbox._worker import main; del sys.path[0]; "
        "sys.exit(main(sys.argv[2:]))"
    )

    def __init__(self, settings: dict, start_timeout_s: float = 120.0):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        env.update(settings["env"])
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-s", "-c", self._LAUNCH, _PACKAGE_ROOT, json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,  # the caller's Ctrl-C goes to the caller, not to programs
        )
        if not wait([self.process.stdout], start_timeout_s):
            self.kill()
            raise SandboxError(f"sandbox worker did not start within {start_timeout_s:g} s")
        line = self.process.stdout.readline()
        if not line:
            err = self.process.stderr.read().decode(errors="replace")[-2000:]
            self.kill()
            raise SandboxError(f"sandbox worker failed to start:\n{err}")
        self.ready = json.loads(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, code: str, timeout_s: float | None) -> None:
        request = {"code": code} if timeout_s is None else {"code": code, "timeout_s": timeout_s}
        # ensure_ascii: lone surrogates in model text travel as \\udXXX escapes
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()

    def receive(self) -> ExecResult:
        line = self.process.stdout.readline()
        if not line:
            raise EOFError("sandbox worker exited")
        return ExecResult(**json.loads(line))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, 9)
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            with contextlib.suppress(OSError):
                stream.close()

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # EOF ends the worker's request loop
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


@dataclass
class SandboxStats:
    """Counters since the pool started (for logs and progress)."""

    programs: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0  # summed wall-clock time of programs
    worker_restarts: int = 0


class Sandbox:
    """A pool of warm workers running untrusted Python programs; see the package docstring
    for what it protects against. Thread-safe; use as a context manager or call ``close``."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._settings = _settings(self.config)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.stats = SandboxStats()
        self.protections: tuple[str, ...] = ()
        self.missing: dict[str, str] = {}

    @property
    def num_workers(self) -> int:
        if self.config.workers:
            return self.config.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    def start(self) -> Sandbox:
        """Start every worker now (otherwise: on first use); checks ``config.require``."""
        with self._lock:
            self._fill()
        return self

    def _fill(self) -> None:
        while len(self._workers) < self.num_workers:
            worker = _Worker(self._settings)
            self._workers.append(worker)
            if len(self._workers) == 1:
                self.protections = tuple(worker.ready["protections"])
                self.missing = dict(worker.ready["missing"])
                absent = [
                    r
                    for r in self.config.require
                    if not any(p.startswith(r) for p in self.protections)
                ]
                if absent:
                    self._close_locked()
                    raise SandboxError(
                        f"sandbox lacks required protections {absent}: {self.missing}"
                    )

    def run(self, code: str, timeout_s: float | None = None) -> ExecResult:
        """Run one program."""
        return self.run_many([code], timeout_s=timeout_s)[0]

    def run_many(
        self,
        programs: Sequence[str],
        on_done: Callable[[int], None] | None = None,
        timeout_s: float | None = None,
    ) -> list[ExecResult]:
        """Run ``programs`` on all workers; one result per program, in order.

        on_done: called with 1 after each program finishes (for progress bars).
        timeout_s: this batch's wall-clock limit per program (default ``config.timeout_s``;
            the CPU limit follows it).
        """
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        results: list[ExecResult | None] = [None] * len(programs)
        with self._lock:
            self._fill()
            todo = deque(range(len(programs)))
            idle = list(self._workers)
            busy: dict[int, tuple[_Worker, int, float]] = {}  # stdout fd -> worker, item, deadline
            grace = (timeout_s or self.config.timeout_s) + 30.0
            while todo or busy:
                while idle and todo:
                    worker, i = idle.pop(), todo.popleft()
                    try:
                        worker.send(programs[i], timeout_s)
                    except OSError:  # the worker died between programs: replace it once
                        worker = self._replace(worker)
                        worker.send(programs[i], timeout_s)
                    busy[worker.process.stdout.fileno()] = (worker, i, time.monotonic() + grace)
                next_deadline = min(deadline for _, _, deadline in busy.values())
                streams = [worker.process.stdout for worker, _, _ in busy.values()]
                for stream in wait(streams, max(0.0, next_deadline - time.monotonic())):
                    worker, i, _ = busy.pop(stream.fileno())
                    try:
                        results[i] = worker.receive()
                        idle.append(worker)
                    except (EOFError, OSError, json.JSONDecodeError, TypeError) as e:
                        results[i] = ExecResult("sandbox_error", error=f"SandboxError: {e}")
                        idle.append(self._replace(worker))
                    self._count(results[i], on_done)
                now = time.monotonic()
                for key, (worker, i, deadline) in list(busy.items()):
                    if now >= deadline:
                        del busy[key]
                        results[i] = ExecResult(
                            "sandbox_error", error="SandboxError: the worker stopped answering"
                        )
                        idle.append(self._replace(worker))
                        self._count(results[i], on_done)
        return results  # type: ignore[return-value]

    def _count(self, result: ExecResult, on_done: Callable[[int], None] | None) -> None:
        stats = self.stats
        stats.programs += 1
        stats.by_status[result.status] = stats.by_status.get(result.status, 0) + 1
        stats.busy_s += result.wall_s
        if on_done is not None:
            on_done(1)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self._settings)
        self._workers[self._workers.index(worker)] = fresh
        self.stats.worker_restarts += 1
        return fresh

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [worker.pid for worker in self._workers]

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers.clear()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
