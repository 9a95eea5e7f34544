"""Per-phase step profiling for every trainer: wall time, tokens/s, MFU, peak memory, traces.

Usage inside a training loop (``cfg.profile`` is a :class:`ProfileConfig`)::

    prof = StepProfiler(cfg.profile, run_dir=run.path, device=ctx.device, rank=ctx.rank,
                        start_step=start)
    with prof:
        for step in range(start, total):
            prof.begin_step(step + 1)
            with prof.phase("data"):
                ...
            with prof.phase("forward_backward"):
                ...
            metrics.update(prof.end_step(StepWork(train_tokens=..., train_flops=...)))

Disabled, ``phase`` returns one shared do-nothing context and ``end_step`` returns ``{}``:
no clock reads, no synchronisation, no keys in the metrics. Enabled, each phase is timed with
``perf_counter`` (on CUDA after a device synchronisation at both ends, so queued kernels are
charged to the phase that launched them), labelled ``dsm/<phase>`` with
``torch.profiler.record_function`` and, with ``memory``, its peak memory is measured: CUDA's
``max_memory_allocated`` (reset at the phase start) on GPU, the process's peak resident set
size (``VmHWM``, reset through ``/proc/self/clear_refs``) on CPU; on a system without those
files memory is left out. The step's remainder outside any phase is reported as ``other``.

Each step writes ``<run_dir>/profile/phases.jsonl`` (rank 0): the phases in order with their
start offsets, which ``dsm profile RUN_DIR`` turns into a table and a timeline. With
``trace_steps: [a, b]`` a ``torch.profiler`` trace of steps a..b (1-based, inclusive) is
exported as Chrome/Perfetto JSON to ``<trace_dir>/trace_steps_a-b.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from dsm_engine.config import ConfigError
from dsm_engine.trainers.metrics import peak_flops_per_device, truncate_jsonl

PHASES_FILE = "phases.jsonl"
PROFILE_DIR = "profile"
# Phases whose time counts as training (the training tokens/s and MFU are over these).
TRAIN_PHASES = ("forward_backward", "optimizer")
GEN_PHASE = "generation"


@dataclass
class ProfileConfig:
    """Per-phase step profiling (``dsm profile RUN_DIR`` reads what it writes).

    ``enabled``: time every phase of every step (``time/<phase>_s``), log tokens/s for training
    and generation, MFU and (``memory``) each phase's peak memory. ``trace_steps``: ``[a, b]``,
    a ``torch.profiler`` Chrome/Perfetto trace of steps a..b (1-based, inclusive) written to
    ``trace_dir`` (default ``<run_dir>/profile``). ``peak_tflops``: the device's peak dense
    TFLOP/s for MFU (default: the bf16 table of ``trainers.metrics``; none on CPU).
    """

    enabled: bool = False
    memory: bool = True
    trace_steps: list[int] | None = None
    trace_dir: str = ""
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        if self.trace_steps is not None:
            steps = self.trace_steps
            if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
                raise ConfigError(
                    f"profile.trace_steps must be [a, b] with 1 <= a <= b, got {list(steps)}"
                )
            if not self.enabled:
                raise ConfigError("profile.trace_steps needs profile.enabled=true")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"profile.peak_tflops must be > 0, got {self.peak_tflops}")


@dataclass(frozen=True)
class StepWork:
    """What one step computed, for the whole job (all ranks): tokens trained (counting every
    update pass), training FLOPs (forward + backward), all model FLOPs of the step (training
    plus log-prob and generation forwards; default the training FLOPs), tokens generated."""

    train_tokens: float
    train_flops: float
    step_flops: float | None = None
    gen_tokens: float | None = None


_NO_PHASE = contextlib.nullcontext()


class _CpuPeakRss:
    """The process's peak resident set size since the last reset (Linux ``/proc`` only).

    The two files stay open (re-read with ``pread``): opening them costs most of the time."""

    def __init__(self) -> None:
        self._status = self._clear = -1
        try:
            self._status = os.open("/proc/self/status", os.O_RDONLY)
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            self.reset()
            self.read_mib()
            self.ok = True
        except (OSError, ValueError):
            self.close()
            self.ok = False

    def reset(self) -> None:
        # "5" resets the high-water RSS mark to the current RSS (Linux >= 4.0).
        os.write(self._clear, b"5")

    def read_mib(self) -> float:
        text = os.pread(self._status, 16384, 0)
        i = text.index(b"VmHWM:")
        return int(text[i + 6 : text.index(b"kB", i)]) / 1024  # kB

    def close(self) -> None:
        for fd in (self._status, self._clear):
            if fd >= 0:
                os.close(fd)
        self._status = self._clear = -1


class _Phase:
    """One timed phase: sync, reset the memory peak, label, time; record on exit."""

    __slots__ = ("prof", "name", "start", "label")

    def __init__(self, prof: StepProfiler, name: str) -> None:
        self.prof, self.name = prof, name
        self.label = torch.profiler.record_function(f"dsm/{name}")

    def __enter__(self) -> None:
        p = self.prof
        p._sync()
        p._reset_peak()
        self.label.__enter__()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        p = self.prof
        p._sync()
        end = time.perf_counter()
        self.label.__exit__(None, None, None)
        p._record(self.name, self.start - p._step_start, end - self.start, p._read_peak())


class StepProfiler:
    """Times a training step's phases and turns them into metrics (see the module docstring).

    Args:
        cfg: the ``profile`` config section.
        run_dir: the run folder (``profile/phases.jsonl`` and the default trace folder).
        device: the compute device (CUDA is synchronised at phase boundaries).
        rank: this process's global rank; only rank 0 writes ``phases.jsonl``.
        start_step: the step the run (re)starts from; later rows of an earlier attempt are
            dropped from ``phases.jsonl``, as in ``metrics.jsonl``.
    """

    def __init__(
        self,
        cfg: ProfileConfig,
        *,
        run_dir: str | Path,
        device: torch.device,
        rank: int = 0,
        start_step: int = 0,
    ) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self._cuda = device.type == "cuda"
        self._device = device
        self._rank = rank
        self._spans: list[tuple[str, float, float, float | None]] = []
        self._step = 0
        self._step_start = 0.0
        self._trace: Any = None
        self._step_label: Any = None
        self._file = None
        self._rss: _CpuPeakRss | None = None
        if not self.enabled:
            return
        if cfg.memory and not self._cuda:
            rss = _CpuPeakRss()
            self._rss = rss if rss.ok else None
        self._memory = cfg.memory and (self._cuda or self._rss is not None)
        peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else peak_flops_per_device(device)
        self.peak_flops = peak if self._cuda or cfg.peak_tflops else None
        out = Path(run_dir) / PROFILE_DIR
        self.trace_dir = Path(cfg.trace_dir) if cfg.trace_dir else out
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            path = out / PHASES_FILE
            truncate_jsonl(path, start_step)
            self._file = path.open("a", buffering=1)

    # -- phases -------------------------------------------------------------------------------

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """A context timing ``name`` (a shared no-op when profiling is off). Phases do not nest;
        one entered several times in a step (e.g. each of μ updates) adds up."""
        if not self.enabled:
            return _NO_PHASE
        return _Phase(self, name)

    def split_last(self, name: str, parts: list[tuple[str, float]], rest: str) -> None:
        """Cut the last ``name`` span into consecutive ``parts`` (name, seconds, timed by the
        code inside it, in the order they ran) and call what remains ``rest``. The parts share
        the span's peak memory."""
        if not self.enabled:
            return
        i = max(i for i, s in enumerate(self._spans) if s[0] == name)
        _, start, dur, peak = self._spans[i]
        spans, t = [], start
        for part, secs in parts:
            secs = min(max(secs, 0.0), start + dur - t)
            spans.append((part, t, secs, peak))
            t += secs
        spans.append((rest, t, start + dur - t, peak))
        self._spans[i : i + 1] = spans

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._device)

    def _reset_peak(self) -> None:
        if not self._memory:
            return
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
        else:
            self._rss.reset()

    def _read_peak(self) -> float | None:
        if not self._memory:
            return None
        if self._cuda:
            return torch.cuda.max_memory_allocated(self._device) / 2**20
        return self._rss.read_mib()

    def _record(self, name: str, start: float, dur: float, peak: float | None) -> None:
        self._spans.append((name, start, dur, peak))

    # -- steps --------------------------------------------------------------------------------

    def begin_step(self, step: int) -> None:
        """Start step ``step`` (1-based); starts the trace at the first step of ``trace_steps``
        (or the first step after it when resuming inside the window)."""
        if not self.enabled:
            return
        self._step, self._spans = step, []
        ts = self.cfg.trace_steps
        if ts is not None and self._trace is None and ts[0] <= step <= ts[1]:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
            self._trace = profile(activities=acts)
            self._trace.__enter__()
        if self._trace is not None:
            self._step_label = torch.profiler.record_function(f"dsm/step_{step}")
            self._step_label.__enter__()
        self._sync()
        self._step_start = time.perf_counter()

    def end_step(self, work: StepWork, *, num_devices: int = 1) -> dict[str, float]:
        """The step's profiling metrics (``{}`` when off); writes its ``phases.jsonl`` row and,
        after the last traced step, the trace. ``num_devices``: devices sharing ``work``."""
        if not self.enabled:
            return {}
        self._sync()
        step_s = time.perf_counter() - self._step_start
        totals: dict[str, float] = {}
        peaks: dict[str, float] = {}
        for name, _, dur, peak in self._spans:
            totals[name] = totals.get(name, 0.0) + dur
            if peak is not None:
                peaks[name] = max(peaks.get(name, 0.0), peak)
        out = {f"time/{n}_s": v for n, v in totals.items()}
        out["time/other_s"] = max(step_s - sum(totals.values()), 0.0)
        out["time/step_s"] = step_s
        train_s = sum(totals.get(n, 0.0) for n in TRAIN_PHASES)
        if train_s > 0:
            out["throughput/train_tokens_per_s"] = work.train_tokens / train_s
        if work.gen_tokens is not None and totals.get(GEN_PHASE, 0.0) > 0:
            out["throughput/gen_tokens_per_s"] = work.gen_tokens / totals[GEN_PHASE]
        if self.peak_flops:
            per_device = self.peak_flops * num_devices
            if train_s > 0:
                out["mfu/train"] = work.train_flops / train_s / per_device
            step_flops = work.step_flops if work.step_flops is not None else work.train_flops
            out["mfu/step"] = step_flops / step_s / per_device
        out.update({f"memory/{n}_peak_mib": v for n, v in peaks.items()})
        if peaks:
            out["memory/step_peak_mib"] = max(peaks.values())
        self._write_row(step_s)
        if self._trace is not None:
            self._step_label.__exit__(None, None, None)
            if self._step >= self.cfg.trace_steps[1]:
                self._finish_trace()
        return out

    def _write_row(self, step_s: float) -> None:
        if self._file is None:
            return
        row = {
            "step": self._step,
            "step_s": step_s,
            "phases": [
                {"name": n, "start_s": s, "dur_s": d, "peak_mib": p} for n, s, d, p in self._spans
            ],
        }
        self._file.write(json.dumps(row) + "\n")

    def _finish_trace(self) -> None:
        trace, self._trace = self._trace, None
        trace.__exit__(None, None, None)
        a, b = self.cfg.trace_steps
        suffix = "" if self._rank == 0 else f".rank{self._rank}"
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        trace.export_chrome_trace(str(self.trace_dir / f"trace_steps_{a}-{b}{suffix}.json"))

    def close(self) -> None:
        """Stop a trace the run ended inside (exporting what it holds) and close the file."""
        if self._trace is not None:
            self._finish_trace()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._rss is not None:
            self._rss.close()
            self._rss = None
            self._memory = False

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def true_peak_gib(metrics: dict[str, float]) -> float | None:
    """The step's peak memory in GiB from the per-phase peaks (None without them).

    Resetting the peak counter at each phase start leaves ``memory_stats()`` reporting only
    what followed the last reset, so the loops raise ``mem_gib`` to this."""
    mib = metrics.get("memory/step_peak_mib")
    return None if mib is None else mib / 1024
