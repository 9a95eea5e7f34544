"""math-verify in worker processes, each check under a hard wall-clock limit.

``SymbolicChecker.check(pairs)`` sends ``(pred, gold)`` pairs to persistent
``python -m dsm_engine.rewards._symbolic`` workers and returns one bool per pair; a check
that overruns ``EquivalenceConfig.timeout_s`` is False and its worker is killed and replaced
(a worker may hang in C code no signal interrupts). The checker is a raw math-verify runner:
what may be sent to it is decided by ``equivalence.are_equivalent``.

There is no process-wide checker: whoever needs one owns it (``with SymbolicChecker() as c:``,
or ``close()``) and hands it to the graders. Workers start on first use, so an unused
checker costs nothing, and a checker dropped without ``close()`` stops its workers when it is
garbage-collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

from dsm_engine.procs import python_argv
from dsm_engine.rewards.guards import nesting_depth

__all__ = ["EquivalenceConfig", "SymbolicChecker"]


@dataclass
class EquivalenceConfig:
    """Limits of the symbolic tier.

    timeout_s: hard wall-clock limit per (gold, pred) check, seconds.
    num_workers: worker processes checking pairs in parallel.
    memory_limit_mb: address-space limit of each worker (0: none).
    max_chars: longer answers skip the symbolic tier (string match only).
    max_depth: answers nested deeper than this ({[( levels) skip the symbolic tier.
    """

    timeout_s: float = 5.0
    num_workers: int = 1
    memory_limit_mb: int = 2048
    max_chars: int = 400
    max_depth: int = 16


# --------------------------------------------------------------------------- worker pool


class _Worker:
    """One math-verify worker subprocess (``python -m dsm_engine.rewards._symbolic``)."""

    def __init__(self, config: EquivalenceConfig) -> None:
        # math-verify's own signal limits (whole seconds) end most slow checks without a
        # respawn; the parent's hard limit catches what signals cannot interrupt
        inner = max(1, int(config.timeout_s / 2))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        command = python_argv("-m", "dsm_engine.rewards._symbolic")
        self.process = subprocess.Popen(
            [*command, str(config.memory_limit_mb), str(inner)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            env=env,
        )
        self.ready = False

    @property
    def stdout(self):
        return self.process.stdout

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the worker has loaded math-verify (its ``ready`` line)."""
        if self.ready:
            return
        if not wait([self.stdout], timeout_s) or self.stdout.readline() != b"ready\n":
            self.kill()
            raise RuntimeError(
                "math-verify worker failed to start (python -m dsm_engine.rewards._symbolic)"
            )
        self.ready = True

    def send(self, gold: str, pred: str) -> None:
        self.process.stdin.write((json.dumps([gold, pred]) + "\n").encode())

    def receive(self) -> bool:
        line = self.stdout.readline()
        if not line:
            raise EOFError("math-verify worker exited")
        return line == b"1\n"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # EOF ends the worker's request loop
            self.process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class SymbolicChecker:
    """math-verify equivalence in worker processes, each check under a hard time limit.

    ``check(pairs)`` takes ``(pred, gold)`` pairs and returns one bool per pair; a pair that
    runs past ``config.timeout_s`` (wall clock, from the moment the warm worker receives it)
    is False and its worker is killed and replaced. Results are cached (LRU). Thread-safe.
    The owner stops the workers: ``close()``, the end of a ``with`` block, or (a fallback)
    garbage collection.
    """

    def __init__(self, config: EquivalenceConfig | None = None, cache_size: int = 100_000):
        self.config = config or EquivalenceConfig()
        if self.config.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.config.timeout_s}")
        if self.config.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.config.num_workers}")
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._cache_size = cache_size
        self.timeouts = 0  # checks that hit the hard limit
        self.checks = 0  # checks sent to a worker
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def __enter__(self) -> SymbolicChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start all workers now and wait until they are warm (otherwise: on first use)."""
        with self._lock:
            while len(self._workers) < self.config.num_workers:
                self._workers.append(_Worker(self.config))
            for worker in self._workers:
                worker.wait_ready()

    def _skip(self, pred: str, gold: str) -> bool:
        cfg = self.config
        return (
            len(pred) > cfg.max_chars
            or len(gold) > cfg.max_chars
            or nesting_depth(pred) > cfg.max_depth
            or nesting_depth(gold) > cfg.max_depth
        )

    def check(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Symbolic verdict for each ``(pred, gold)``; False on timeout, error or skip."""
        results = [False] * len(pairs)
        todo: deque[int] = deque()
        with self._lock:
            for i, (pred, gold) in enumerate(pairs):
                key = (gold, pred)
                if key in self._cache:
                    self._cache.move_to_end(key)
                    results[i] = self._cache[key]
                elif not self._skip(pred, gold):
                    todo.append(i)
            if todo:
                self._run(pairs, todo, results)
        return results

    def _run(self, pairs: Sequence[tuple[str, str]], todo: deque[int], results: list[bool]):
        while len(self._workers) < min(self.config.num_workers, len(todo)):
            self._workers.append(_Worker(self.config))
        idle = list(self._workers)
        busy: dict[int, tuple[_Worker, int, float]] = {}  # stdout fd -> worker, item, deadline
        while todo or busy:
            while idle and todo:
                worker, i = idle.pop(), todo.popleft()
                pred, gold = pairs[i]
                worker.wait_ready()
                try:
                    worker.send(gold, pred)
                except OSError:  # the worker died between checks: replace it once
                    worker = self._replace(worker)
                    worker.wait_ready()
                    worker.send(gold, pred)
                self.checks += 1
                deadline = time.monotonic() + self.config.timeout_s
                busy[worker.stdout.fileno()] = (worker, i, deadline)
            next_deadline = min(deadline for _, _, deadline in busy.values())
            streams = [worker.stdout for worker, _, _ in busy.values()]
            for stream in wait(streams, max(0.0, next_deadline - time.monotonic())):
                worker, i, _ = busy.pop(stream.fileno())
                try:
                    results[i] = worker.receive()
                    idle.append(worker)
                except (EOFError, OSError):  # the worker died (e.g. hit its memory limit)
                    idle.append(self._replace(worker))
                self._remember(pairs[i], results[i])
            now = time.monotonic()
            for key, (worker, i, deadline) in list(busy.items()):
                if now >= deadline:
                    del busy[key]
                    self.timeouts += 1
                    self._remember(pairs[i], False)
                    idle.append(self._replace(worker))

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self.config)
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def _remember(self, pair: tuple[str, str], verdict: bool) -> None:
        pred, gold = pair
        self._cache[(gold, pred)] = verdict
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def close(self) -> None:
        """Stop all worker processes (the checker stays usable: workers restart on use)."""
        with self._lock:
            _stop_all(self._workers)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [worker.process.pid for worker in self._workers]


def _stop_all(workers: list[_Worker]) -> None:
    """Stop ``workers`` and empty the list (a finalizer: must not refer to the checker)."""
    for worker in workers:
        worker.stop()
    workers.clear()
