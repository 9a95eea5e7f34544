"""One metrics logger for every trainer: JSON Lines, TensorBoard and a rich progress bar.

Usage (every rank may construct it; only the rank with ``enabled=True`` writes)::

    logger = MetricsLogger(run.path, total_steps=1000, start_step=resumed_step,
                           enabled=rank == 0, description="pretrain")
    with logger:
        for step in range(start, total):
            ...
            logger.log(step + 1, {"loss": 2.1, "lr": 3e-4, **throughput(...), **memory_stats()})

``metrics.jsonl`` holds one object per ``log`` call: ``{"step": int, "time": unix seconds,
<name>: float, ...}``. On resume (``start_step=k``) rows with ``step > k`` — written after the
checkpoint that is being resumed — are dropped so that the file describes one consistent run,
and TensorBoard purges the same steps.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

# Dense bf16 peak throughput per device (FLOP/s), from the vendors' data sheets (no sparsity).
# The first key found in the device name wins, so the PCIe/NVL variants come before "H100".
# ``profile.peak_tflops`` overrides it (other dtypes, devices not listed).
_PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "B200": 2250e12,
    "B100": 1750e12,
    "L4": 121e12,
}


def peak_flops_per_device(device: torch.device | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of the current CUDA device, or None when unknown (e.g. CPU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in _PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def throughput(
    tokens: int,
    seconds: float,
    *,
    flops_per_token: float | None = None,
    num_devices: int = 1,
    peak_flops: float | None = None,
) -> dict[str, float]:
    """Tokens/s (total and per device) and MFU for ``tokens`` processed in ``seconds``.

    ``flops_per_token`` is the training cost of one token (forward + backward) of the model;
    MFU = achieved FLOP/s per device / ``peak_flops``. MFU is omitted when either is unknown.
    """
    if seconds <= 0:
        return {}
    tps = tokens / seconds
    out = {"tokens_per_s": tps, "tokens_per_s_per_device": tps / num_devices}
    if flops_per_token is not None and peak_flops:
        out["mfu"] = tps * flops_per_token / num_devices / peak_flops
    return out


def memory_stats() -> dict[str, float]:
    """Peak memory in GiB: CUDA max allocated on GPU (reset after reading), process RSS on CPU."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return {"mem_gib": peak}
    # ru_maxrss is KiB on Linux.
    return {"mem_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows with ``step > last_step`` (and a torn last line) in place, atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if int(row.get("step", 0)) <= last_step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


class MetricsLogger:
    """Writes step metrics to ``<run_dir>/metrics.jsonl``, TensorBoard and a progress bar.

    Args:
        run_dir: the run folder (None: terminal only).
        total_steps: length of the progress bar.
        start_step: the step the run (re)starts from; later rows of an earlier attempt are dropped.
        enabled: False on ranks that must not write (everything becomes a no-op).
        tensorboard / progress: turn those outputs off.
        description: the progress bar's label.
        show: metric names shown next to the progress bar (all are written to the files).
    """

    def __init__(
        self,
        run_dir: str | Path | None,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        description: str = "train",
        show: tuple[str, ...] = ("loss", "lr", "grad_norm", "tokens_per_s"),
    ) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.show = show
        self._file = None
        self._tb = None
        self._progress = None
        self._task = None
        if not enabled:
            return
        if run_dir is not None:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / "metrics.jsonl"
            truncate_jsonl(path, start_step)
            self._file = path.open("a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
                )
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                description, total=total_steps, completed=start_step, info=""
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` (name -> number) for ``step`` (1-based count of finished steps)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if self._file is not None:
            row = {"step": step, "time": time.time(), **clean}
            self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for name, value in clean.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, step)
        if self._progress is not None:
            info = "  ".join(f"{k} {clean[k]:.4g}" for k in self.show if k in clean)
            self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        """Flush and close every output (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
