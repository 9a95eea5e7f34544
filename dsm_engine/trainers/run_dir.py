"""The run folder: one directory per training run, never silently overwritten.

Layout::

    <run_dir>/config.yaml        the resolved config of the latest start (written by rank 0)
    <run_dir>/metrics.jsonl      one JSON object per logged step (see metrics.py)
    <run_dir>/tensorboard/       TensorBoard event files
    <run_dir>/checkpoints/       the checkpoint layer's root (dsm_engine.models.checkpoint)

Rules (``prepare_run_dir``):

- a missing or empty folder starts a fresh run;
- ``resume="auto"`` continues from the latest complete checkpoint under ``checkpoints/``, or
  starts fresh in the same folder when none was completed yet;
- ``overwrite=True`` clears the folder and starts fresh;
- otherwise a folder that already holds files is an error, and nothing in it is touched.

Every rank calls ``prepare_run_dir``; only rank 0 writes, and all ranks return the same answer
(the folder must be on a file system all ranks see, as checkpoints need anyway).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist

from dsm_engine.config import save_config

CONFIG_NAME = "config.yaml"
CHECKPOINTS = "checkpoints"


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (it holds another run, or is not a folder)."""


@dataclass
class RunDir:
    """Where a run lives and where it starts from.

    ``resume_from`` is the checkpoint directory to load (None for a fresh start).
    """

    path: Path
    resume_from: Path | None

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _default_latest(root: Path) -> Path | None:
    from dsm_engine.models.checkpoint import latest_checkpoint

    return latest_checkpoint(root) if root.is_dir() else None


def decide(
    path: Path,
    *,
    overwrite: bool,
    resume: Literal["never", "auto"],
    latest: Callable[[Path], Path | None] = _default_latest,
) -> tuple[str, Path | None]:
    """Pure decision: ``("fresh" | "clear" | "resume", checkpoint)``; raises RunDirError.

    Reads the file system, writes nothing.
    """
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run_dir {path} exists and is not a folder")
    if not path.exists() or not any(path.iterdir()):
        return "fresh", None
    if resume == "auto":
        ckpt = latest(path / CHECKPOINTS)
        if ckpt is not None:
            return "resume", ckpt
        if overwrite or (path / CONFIG_NAME).is_file():
            # A run of ours that died before its first checkpoint: starting it again is the
            # resume; anything else in the folder is not ours to delete.
            return "clear", None
    if overwrite:
        return "clear", None
    raise RunDirError(
        f"run_dir {path} already holds a run; pass overwrite=true to replace it "
        f"or resume=auto to continue it (nothing was written)"
    )


def prepare_run_dir(
    path: str | Path,
    config: Any,
    *,
    overwrite: bool = False,
    resume: Literal["never", "auto"] = "never",
    latest: Callable[[Path], Path | None] = _default_latest,
) -> RunDir:
    """Create/clear/resume the run folder per the rules above and write ``config.yaml``.

    Must be called by every rank (it synchronises them); only rank 0 writes.
    """
    path = Path(path)
    # Every rank decides from the same (unchanged) folder before rank 0 touches it.
    action, ckpt = decide(path, overwrite=overwrite, resume=resume, latest=latest)
    _barrier()
    if _rank() == 0:
        if action == "clear":
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)
        (path / CHECKPOINTS).mkdir(exist_ok=True)
        save_config(config, path / CONFIG_NAME)
    _barrier()
    return RunDir(path=path, resume_from=ckpt)
