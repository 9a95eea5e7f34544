"""The run folder: one directory per training run, held by one run at a time, never silently
overwritten.

Layout (``RUN_ENTRIES``: what the engine writes at the top of a run folder)::

    <run_dir>/config.yaml        the resolved config of the latest start (written by rank 0)
    <run_dir>/metrics.jsonl      one JSON object per logged step (see metrics.py)
    <run_dir>/tensorboard/       TensorBoard event files
    <run_dir>/checkpoints/       the checkpoint layer's root (dsm_engine.models.checkpoint)
    <run_dir>/checkpoints/tokenizer/   the tokenizer the run trains with (exports carry it)
    <run_dir>/data_cache/        pretraining's dataset index cache (default data.cache_dir)
    <run_dir>/reference/         GRPO: the reference policy of the current iteration
    <run_dir>/reward_model/      GRPO with iterative RL: the reward models it trained
    <run_dir>/<panel>.png        ``dsm plot`` curves
    <run_dir>/profile/           ``profile.enabled``: phases.jsonl, traces, ``dsm profile``'s PNG

Rules (``prepare_run_dir``):

- the folder is locked for the life of the run (:mod:`dsm_engine.folder_lock`, the lock file
  sits beside the folder): a second run on it is refused with one line naming the holder's pid
  and host; a lock left by a dead process is taken over;
- a missing or empty folder starts a fresh run;
- ``resume="auto"`` continues from the latest complete checkpoint under ``checkpoints/``, or
  starts fresh in the same folder when none was completed yet;
- ``overwrite=True`` deletes the engine's entries above, whole, and keeps everything else (a
  user's notes, an analysis folder), naming what it kept;
- otherwise a folder that already holds files is an error, and nothing in it is touched.

Every rank calls ``prepare_run_dir``. Rank 0 alone takes the lock, decides and writes; the
other ranks receive its answer, or its error, by broadcast (so a refused run ends on every rank
instead of waiting at a barrier). The folder must be on a file system all ranks see, as
checkpoints need anyway. The lock is held until ``RunDir.release()`` (a ``with run:`` block
ends) or the process ends.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist

from dsm_engine.config import save_config
from dsm_engine.folder_lock import FolderLock, FolderLockedError
from dsm_engine.models.hf_tokenizer import save_hf_tokenizer

CONFIG_NAME = "config.yaml"
CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"  # under checkpoints/, where dsm convert dsm-to-hf looks
# The top-level entries the engine writes in a run folder (the layout above): ``overwrite``
# deletes these and nothing else.
RUN_ENTRIES = frozenset(
    {
        CONFIG_NAME,
        "metrics.jsonl",
        "tensorboard",
        CHECKPOINTS,
        "data_cache",
        "reference",
        "reward_model",
        "profile",
        *(f"{panel}.png" for panel in ("reward", "kl", "eval_accuracy", "loss")),
    }
)


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (it holds another run, or is not a folder)."""


@dataclass
class RunDir:
    """Where a run lives and where it starts from; holds the folder's lock (on rank 0).

    ``resume_from`` is the checkpoint directory to load (None for a fresh start). Use it as a
    context manager (``with run:``) around the run, or call :meth:`release` at its end.
    """

    path: Path
    resume_from: Path | None
    lock: FolderLock | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Give the folder's lock up (idempotent; nothing to do on ranks other than 0)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

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


def _from_rank0(obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


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


def clear_run_dir(path: Path) -> list[str]:
    """Delete the engine's entries (``RUN_ENTRIES``) in ``path``; returns the names it kept."""
    kept = []
    for child in sorted(path.iterdir()):
        if child.name not in RUN_ENTRIES:
            kept.append(child.name + ("/" if child.is_dir() else ""))
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return kept


def _start(
    path: Path,
    config: Any,
    *,
    overwrite: bool,
    resume: Literal["never", "auto"],
    latest: Callable[[Path], Path | None],
    tokenizer: str | Path | None,
) -> tuple[FolderLock, Path | None]:
    """Rank 0's part: lock, decide, clear, write the tokenizer and ``config.yaml``; the lock is
    released on error."""
    try:
        lock = FolderLock(path)
    except FolderLockedError as e:
        raise RunDirError(f"run_dir {e}") from None
    try:
        action, ckpt = decide(path, overwrite=overwrite, resume=resume, latest=latest)
        if action == "clear":
            kept = clear_run_dir(path)
            if kept:
                print(f"run_dir {path}: kept {', '.join(kept)} (not the engine's)", file=sys.stderr)
        path.mkdir(parents=True, exist_ok=True)
        (path / CHECKPOINTS).mkdir(exist_ok=True)
        if tokenizer is not None:
            save_hf_tokenizer(tokenizer, path / CHECKPOINTS / TOKENIZER)
        save_config(config, path / CONFIG_NAME)
    except BaseException:
        lock.release()
        raise
    return lock, ckpt


def prepare_run_dir(
    path: str | Path,
    config: Any,
    *,
    overwrite: bool = False,
    resume: Literal["never", "auto"] = "never",
    latest: Callable[[Path], Path | None] = _default_latest,
    tokenizer: str | Path | None = None,
) -> RunDir:
    """Lock, then create/clear/resume the run folder per the rules above and write
    ``config.yaml``; raises :class:`RunDirError` (on every rank) when it cannot.

    ``tokenizer``: the one the run trains with (a ``tokenizer.json`` or a Hugging Face folder),
    saved under ``checkpoints/tokenizer`` so that ``dsm convert dsm-to-hf`` exports carry it.

    Must be called by every rank (it synchronises them); only rank 0 locks and writes.
    """
    path = Path(path)
    lock, ckpt, error = None, None, None
    if _rank() == 0:
        try:
            lock, ckpt = _start(
                path,
                config,
                overwrite=overwrite,
                resume=resume,
                latest=latest,
                tokenizer=tokenizer,
            )
        except Exception as e:  # relayed to the other ranks first, then raised here
            error = e
    message, ckpt = _from_rank0((None if error is None else str(error), ckpt))
    if error is not None:
        raise error
    if message is not None:
        raise RunDirError(message)
    return RunDir(path=path, resume_from=ckpt, lock=lock)
