"""Crash-safe distributed checkpoints on megatron-core's ``dist_checkpointing``.

Layout under a checkpoint root::

    root/
      latest                 # text: name of the newest *complete* step folder
      step_0000100/
        dsm_meta.json        # model config, step, parallel layout it was saved from
        extra/rank_00000.pt  # plain python / torch state per rank (step, scheduler, RNG, ...)
        ...                  # megatron dist_checkpointing files (model, optimizer)
      .tmp-step_0000200/     # a save in progress (or killed); never read, cleaned on next save

A save writes everything into ``.tmp-step_N`` and renames it to ``step_N`` only after all ranks
finished; ``latest`` is then replaced atomically. A process killed at any point leaves either
the old or the new checkpoint complete, and ``latest`` naming a complete one. The tensors are
stored by global shape, so a checkpoint saved at one TP/PP layout loads at another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dsm_engine.models.config import ModelConfig

META = "dsm_meta.json"
LATEST = "latest"
FORMAT = 1
# Fields that define the weights' shapes and meaning; the rest (seq length, dropout, dtype)
# may differ between the saving and the loading run.
ARCH_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
    "untie_embeddings",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _chunks(model) -> list[torch.nn.Module]:
    from dsm_engine.models.build import _unwrap

    models = model if isinstance(model, (list, tuple)) else [model]
    return [_unwrap(m) for m in models]


def _model_cfg(model) -> ModelConfig:
    cfg = getattr(_chunks(model)[0], "model_cfg", None)
    if cfg is None:
        raise TypeError("checkpoint: model must come from dsm_engine.models.build_model")
    return cfg


def _sharded_model_state(model) -> dict[str, Any]:
    # Keys of the returned ShardedTensors are global (layer offsets applied), so chunks of a
    # virtual pipeline can share one namespace and reload at another layout.
    return {f"chunk{i}": m.sharded_state_dict() for i, m in enumerate(_chunks(model))}


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_buckets_in_process(transform_list, use_msc, rank, write_buckets, results_queue) -> None:
    """Write every bucket in this process and report like megatron's forked writers do."""
    import queue

    from megatron.core.dist_checkpointing.strategies.filesystem_async import (
        FileSystemWriterAsync,
    )

    results: dict[int, Any] = {}
    for i, bucket in enumerate(write_buckets):
        local, count = queue.Queue(), queue.Queue()
        count.put(i)
        FileSystemWriterAsync.write_preloaded_data(
            transform_list, i, bucket, local, count, use_fsync=True
        )
        idx, out = local.get()
        if isinstance(out, Exception):
            results_queue.put(out)
            return
        results[idx] = out
    results_queue.put(results)


@contextlib.contextmanager
def _in_process_writer():
    """Make dist_checkpointing's torch_dist writer write in the calling process.

    Its default writer forks helper processes (and spawns a multiprocessing manager) per save;
    forking a process that holds gloo / OpenMP threads can deadlock the child, and a save is
    synchronous here anyway. Scoped to one ``save`` call.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
    from megatron.core.dist_checkpointing.strategies import torch as dctorch

    base = fsa.FileSystemWriterAsync

    class InProcessWriter(base):  # type: ignore[misc, valid-type]
        def get_save_function_and_args(self):
            fn, stage, args = super().get_save_function_and_args()
            if fn is None:
                return fn, stage, args
            transforms = [self.transforms] if hasattr(self, "transforms") else []
            return (
                functools.partial(_write_buckets_in_process, transforms, self.use_msc),
                stage,
                args,
            )

    saved_queue, saved_writer = fsa._results_queue, dctorch.FileSystemWriterAsync
    fsa._results_queue = queue.Queue()
    dctorch.FileSystemWriterAsync = InProcessWriter
    try:
        yield
    finally:
        fsa._results_queue, dctorch.FileSystemWriterAsync = saved_queue, saved_writer


def save_checkpoint(
    root: str | Path,
    step: int,
    model,
    *,
    optimizer=None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (a model or list of chunks), optionally a megatron optimizer, and ``extra``.

    Collective: every rank calls it. Returns the final ``root/step_N`` folder.
    """
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # leftovers of killed saves or step swaps
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()

    state = {"model": _sharded_model_state(model)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"])
    with _in_process_writer():
        dist_checkpointing.save(state, str(tmp))
    (tmp / "extra").mkdir(exist_ok=True)
    torch.save(extra or {}, tmp / "extra" / f"rank_{_rank():05d}.pt")
    _barrier()

    if _rank() == 0:
        from megatron.core import parallel_state as ps

        meta = {
            "format": FORMAT,
            "step": step,
            "model_config": dataclasses.asdict(_model_cfg(model)),
            "parallel": {
                "tp": ps.get_tensor_model_parallel_world_size(),
                "pp": ps.get_pipeline_model_parallel_world_size(),
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            },
            "has_optimizer": optimizer is not None,
        }
        _fsync_write(tmp / META, json.dumps(meta, indent=2))
        if final.exists():  # re-saving a step: swap in the new one, then drop the old
            old = root / f".tmp-old-{step_name(step)}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        _fsync_write(root / LATEST, final.name)
    _barrier()
    return final


def _is_complete(step_dir: Path) -> bool:
    return (step_dir / META).is_file()


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete ``step_N`` folder under ``root`` (via ``latest``), or ``None``."""
    root = Path(root)
    marker = root / LATEST
    if marker.is_file():
        candidate = root / marker.read_text().strip()
        if _is_complete(candidate):
            return candidate
    complete = sorted(p for p in root.glob("step_*") if _is_complete(p))
    return complete[-1] if complete else None


def resolve_checkpoint(root_or_dir: str | Path, step: int | None = None) -> Path:
    """A complete step folder from a root (latest or ``step``) or a step folder itself."""
    path = Path(root_or_dir)
    if step is None and _is_complete(path):
        return path
    if step is not None:
        candidate = path / step_name(step)
        if not _is_complete(candidate):
            raise CheckpointError(f"{candidate}: no complete checkpoint for step {step}")
        return candidate
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path}: no complete checkpoint found")
    return found


def read_meta(step_dir: str | Path) -> dict[str, Any]:
    """The ``dsm_meta.json`` of a step folder."""
    path = Path(step_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{step_dir}: not a complete dsm checkpoint ({META} missing)")
    return json.loads(path.read_text())


def check_architecture(saved: dict[str, Any], cfg: ModelConfig, where: Path) -> None:
    """Raise :class:`CheckpointError` naming the first architecture field that differs."""
    saved_cfg = ModelConfig(**saved)
    for field in ARCH_FIELDS:
        a, b = getattr(saved_cfg, field), getattr(cfg, field)
        if field == "num_query_groups":
            a, b = saved_cfg.kv_heads, cfg.kv_heads
        if a != b:
            raise CheckpointError(
                f"{where}: checkpoint of another architecture: ModelConfig.{field} is {a} in "
                f"the checkpoint but {b} in the model"
            )


def _check_tensors_present(state: dict[str, Any], step_dir: Path) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    available = dist_checkpointing.load_tensors_metadata(str(step_dir))
    missing = sorted(
        {
            v.key
            for v in nested_values(state)
            if isinstance(v, ShardedTensor) and v.key not in available
        }
    )
    if missing:
        raise CheckpointError(
            f"{step_dir}: tensor '{missing[0]}' is missing from the checkpoint"
            + (f" (and {len(missing) - 1} more: {missing[1:6]})" if len(missing) > 1 else "")
        )


def load_checkpoint(
    root_or_dir: str | Path, model, *, optimizer=None, step: int | None = None
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``); returns this rank's ``extra``.

    Works across TP/PP layouts. Raises :class:`CheckpointError` for an incomplete checkpoint,
    another architecture, or a missing tensor (named).
    """
    from megatron.core import dist_checkpointing

    step_dir = resolve_checkpoint(root_or_dir, step)
    meta = read_meta(step_dir)
    check_architecture(meta["model_config"], _model_cfg(model), step_dir)
    if optimizer is not None and not meta.get("has_optimizer"):
        raise CheckpointError(f"{step_dir}: optimizer state requested but none was saved")

    state = {"model": _sharded_model_state(model)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=True)
    _check_tensors_present(state, step_dir)
    loaded = dist_checkpointing.load(state, str(step_dir))
    for i, m in enumerate(_chunks(model)):
        m.load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])

    extra_dir = step_dir / "extra"
    mine = extra_dir / f"rank_{_rank():05d}.pt"
    source = mine if mine.is_file() else extra_dir / "rank_00000.pt"
    if not source.is_file():
        return {}
    return torch.load(source, map_location="cpu", weights_only=False)
