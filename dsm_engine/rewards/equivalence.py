"""Answer normalisation and equivalence checking with hard time limits.

Two tiers, cheapest first:

1. ``quick_equivalence``: MATH-style string normalisation (``normalize_answer``) and exact
   rational comparison of plain numbers, in-process, microseconds, no parser involved.
2. ``SymbolicChecker``: math-verify (LaTeX -> SymPy) in persistent worker processes. Each
   check has a hard wall-clock limit: a worker that overruns is killed and replaced, and the
   pair scores "not equivalent". Model text is never evaluated as Python (see _symbolic.py).

``is_equivalent``/``are_equivalent`` combine both tiers with a process-wide checker.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import wait

from dsm_engine.procs import python_argv
from dsm_engine.rewards.extract import to_halfwidth

__all__ = [
    "EquivalenceConfig",
    "SymbolicChecker",
    "are_equivalent",
    "get_checker",
    "is_equivalent",
    "normalize_answer",
    "parse_number",
    "quick_equivalence",
]


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


# --------------------------------------------------------------------------- normalisation

_TEXT_COMMANDS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mbox", "\\rm")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
# a unit word needs a space ("\text{ m}") or two letters ("\text{cm}"): "5\mathrm{i}" is no unit
_UNIT_TAIL_RE = re.compile(
    r"^(.*\d[^\\]*?)\s*\\(?:text|mbox)\{(?:\s+[a-zA-Z]|[a-zA-Z]{2})[a-zA-Z\s.]*\}(\^\{?\d\}?)?$"
)
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\})")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d|[a-zA-Z])")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TRAILING_ZERO_RE = re.compile(r"^(-?\d+)\.0+$")
_SLASH_FRACTION_RE = re.compile(r"^(-?)(\d{1,30})/(\d{1,30})$")
_LATEX_FRACTION_RE = re.compile(r"^(-?)\\frac\{(-?\d{1,30})\}\{(\d{1,30})\}$")
_DECIMAL_RE = re.compile(r"^-?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})$")
_MAX_NORMALIZE_CHARS = 2000
_ASSIGNMENT_RE = re.compile(r"^\s*[a-zA-Z](?:_\{?\w\}?)?\s*=\s*(?!=)")


def _unwrap_command(text: str, command: str) -> str:
    """Replace ``\\command{X}`` by ``X`` (nested braces respected)."""
    out = []
    i = 0
    while True:
        j = text.find(command + "{", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        # \textbf must not match as \text + "bf{": check the next char is the brace
        out.append(text[i:j])
        k = j + len(command)
        depth = 0
        end = -1
        for m in range(k, len(text)):
            if text[m] == "{":
                depth += 1
            elif text[m] == "}":
                depth -= 1
                if depth == 0:
                    end = m
                    break
        if end < 0:
            out.append(text[j:])
            return "".join(out)
        out.append(text[k + 1 : end])
        i = end + 1


def normalize_answer(answer: str) -> str:
    """Canonical string form of a final answer, in the spirit of the MATH paper's ``is_equiv``.

    Removes what does not change the value: spaces, ``$``, ``\\left``/``\\right``, ``\\!`` and
    other spacing, degrees, percent signs, trailing unit words (``5\\text{ cm}``), ``\\text{}``
    wrappers, an ``x =`` prefix, thousands separators and trailing ``.0``; rewrites
    ``\\dfrac``/``\\tfrac`` to ``\\frac``, ``\\frac12`` to ``\\frac{1}{2}``, ``\\sqrt3`` to
    ``\\sqrt{3}``, ``a/b`` to ``\\frac{a}{b}`` and ``0.5`` to ``\\frac{1}{2}``.
    """
    if len(answer) > _MAX_NORMALIZE_CHARS:
        return answer.strip()  # no final answer is this long: keep the regexes linear
    s = to_halfwidth(answer).strip()
    s = s.replace("\n", " ").replace("\\\\", "\\")
    for space in _SPACING:
        s = s.replace(space, " ")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip().rstrip(".").strip()
    unit = _UNIT_TAIL_RE.match(s)
    if unit:
        s = unit.group(1)
    for command in _TEXT_COMMANDS:
        if command + "{" in s:
            s = _unwrap_command(s, command)
    if s.count("=") == 1 and _ASSIGNMENT_RE.match(s):
        s = s.split("=", 1)[1]
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_SHORT_RE.sub(lambda m: "\\frac" + _braced(m.group(1)) + _braced(m.group(2)), s)
    s = s.replace(" ", "")
    s = re.sub(r"(^|[{(\[,=+\-])\.(\d)", r"\g<1>0.\2", s)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    zero = _TRAILING_ZERO_RE.match(s)
    if zero:
        s = zero.group(1)
    if s == "0.5":
        s = "\\frac{1}{2}"
    slash = _SLASH_FRACTION_RE.match(s)
    if slash:
        s = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
    return s


def _braced(token: str) -> str:
    return token if token.startswith("{") else "{" + token + "}"


def parse_number(answer: str) -> Fraction | None:
    """Exact value of a plain number (``-12``, ``3.50``, ``3/4``, ``\\frac{3}{4}``), else None.

    Bounded-length regexes only: never exponent notation, so no huge integer is built.
    """
    s = normalize_answer(answer)
    if _DECIMAL_RE.match(s):
        return Fraction(s)
    frac = _LATEX_FRACTION_RE.match(s)
    if frac:
        sign = -1 if frac.group(1) else 1
        numerator, denominator = int(frac.group(2)), int(frac.group(3))
        if denominator == 0:
            return None
        return sign * Fraction(numerator, denominator)
    return None


def _decimal_places(text: str) -> int:
    s = to_halfwidth(text).strip().rstrip("%").strip()
    return len(s.split(".", 1)[1]) if re.fullmatch(r"-?\d+\.\d+", s) else 0


def _is_terminating(value: Fraction) -> bool:
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def quick_equivalence(pred: str, gold: str, allow_rounding: bool = False) -> bool | None:
    """Cheap verdict: True/False when decided by normalised strings or exact numbers, else None.

    allow_rounding: accept a decimal ``pred`` (>= 2 places) that is ``gold`` correctly rounded,
    when ``gold`` has no finite decimal expansion (``0.33`` for ``1/3``; never ``0.13`` for 0.125).
    """
    if not pred or not gold:
        return False
    if len(pred) > _MAX_NORMALIZE_CHARS or len(gold) > _MAX_NORMALIZE_CHARS:
        return pred.strip() == gold.strip()  # no final answer is this long: skip the regexes
    norm_pred, norm_gold = normalize_answer(pred), normalize_answer(gold)
    if not norm_pred or not norm_gold:
        return False
    if norm_pred == norm_gold:
        return True
    value_pred, value_gold = parse_number(pred), parse_number(gold)
    if value_pred is None or value_gold is None:
        return None
    if value_pred == value_gold:
        return True
    places = _decimal_places(pred)
    if allow_rounding and places >= 2 and not _is_terminating(value_gold):
        return abs(value_pred - value_gold) <= Fraction(1, 2 * 10**places)
    return False


def _nesting_depth(text: str) -> int:
    depth = best = 0
    for ch in text:
        if ch in "{[(":
            depth += 1
            best = max(best, depth)
        elif ch in "}])":
            depth = max(0, depth - 1)
    return best


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
    is False and its worker is killed and replaced. Results are cached (LRU). Thread-safe;
    ``close()`` (or interpreter exit) stops the workers.
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
            or _nesting_depth(pred) > cfg.max_depth
            or _nesting_depth(gold) > cfg.max_depth
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
        """Stop all worker processes."""
        with self._lock:
            for worker in self._workers:
                worker.stop()
            self._workers.clear()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [worker.process.pid for worker in self._workers]


# --------------------------------------------------------------------------- public API

_DEFAULT: SymbolicChecker | None = None
_DEFAULT_LOCK = threading.Lock()


def get_checker(config: EquivalenceConfig | None = None) -> SymbolicChecker:
    """The process-wide checker (created on first use; ``config`` only applies then)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            if config is None:
                workers = int(os.environ.get("DSM_VERIFY_WORKERS", "1"))
                config = EquivalenceConfig(num_workers=max(1, workers))
            _DEFAULT = SymbolicChecker(config)
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def are_equivalent(
    pairs: Sequence[tuple[str | None, str | None]],
    checker: SymbolicChecker | None = None,
    symbolic: bool = True,
    allow_rounding: bool = False,
) -> list[bool]:
    """Verdict per ``(pred, gold)`` pair: quick tier first, math-verify only when undecided.

    A None or empty answer is never equivalent. ``symbolic=False`` stops at the quick tier
    (undecided pairs are False), for numeric benchmarks where math-verify adds nothing.
    """
    results: list[bool] = [False] * len(pairs)
    undecided: list[int] = []
    for i, (pred, gold) in enumerate(pairs):
        if not pred or not gold:
            continue
        verdict = quick_equivalence(pred, gold, allow_rounding=allow_rounding)
        if verdict is None:
            undecided.append(i)
        else:
            results[i] = verdict
    if symbolic and undecided:
        checker = checker or get_checker()
        verdicts = checker.check([(str(pairs[i][0]), str(pairs[i][1])) for i in undecided])
        for i, verdict in zip(undecided, verdicts):
            results[i] = verdict
    return results


def is_equivalent(pred: str | None, gold: str | None, **kwargs) -> bool:
    """``are_equivalent`` for one pair."""
    return are_equivalent([(pred, gold)], **kwargs)[0]
