"""Process groups, devices and seeds for tensor / pipeline / data parallel training.

:func:`initialize_parallel` is the single entry point: under ``torchrun`` it joins the job from
the ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables; run as a plain script it creates a
one-process group on a free local port, so the same model code runs in both cases. It picks
NCCL + CUDA when CUDA is present, gloo + CPU otherwise (installing the CPU bridge), then
initialises megatron-core's ``parallel_state`` and its RNG tracker.

Distributed state is created only where it is asked for: by a training session or a command,
through :func:`initialize_parallel` / :func:`destroy_parallel` or the
:func:`parallel_session` block. Libraries that need a context (``from_pretrained``,
``load_reward_fn``) take one, or use the one already set up via :func:`require_context`, and
never create it themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsm_engine.config import ConfigError


@dataclass
class ParallelConfig:
    """Parallel layout. ``dp`` is inferred as ``world_size // (tp * pp)`` when ``None``."""

    tp: int = 1
    pp: int = 1
    dp: int | None = None
    virtual_pp: int | None = None
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        for name in ("tp", "pp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ParallelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.virtual_pp is not None and (self.virtual_pp < 1 or self.pp < 2):
            raise ConfigError(
                f"ParallelConfig.virtual_pp={self.virtual_pp} needs pp >= 2 and virtual_pp >= 1"
            )
        if self.virtual_pp == 1:
            self.virtual_pp = None


@dataclass
class ParallelContext:
    """Where this process sits in the (tp, pp, dp) grid; groups are torch process groups."""

    config: ParallelConfig
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_size: int
    pp_size: int
    dp_size: int
    tp_group: dist.ProcessGroup
    pp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup
    owns_process_group: bool = False

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


_CONTEXT: ParallelContext | None = None
# set when a context we created was torn down with keep_process_group=True
_OWNED_GROUP = [False]


def current_context() -> ParallelContext | None:
    """The context set up by :func:`initialize_parallel`, or ``None``."""
    return _CONTEXT


def require_context(ctx: ParallelContext | None, caller: str) -> ParallelContext:
    """``ctx``, else the context already set up; raises ``RuntimeError`` naming what to call
    when there is none (a library never creates distributed state as a side effect)."""
    ctx = ctx or _CONTEXT
    if ctx is None:
        raise RuntimeError(
            f"{caller} needs a parallel context and none is set up: run it inside "
            "`with dsm_engine.models.parallel_session() as ctx:` (or after "
            "dsm_engine.models.initialize_parallel()) and pass ctx=ctx"
        )
    return ctx


@contextmanager
def parallel_session(
    cfg: ParallelConfig | None = None, *, seed: int = 1234
) -> Iterator[ParallelContext]:
    """A parallel context for the ``with`` block, torn down when the block ends.

    For commands that need model-parallel state for a while (loading a policy, scoring with a
    reward model). Inside a context with the same config (a training session's) the block uses
    it and leaves it in place; inside one with another config it raises ``RuntimeError``
    rather than replacing the owner's groups.
    """
    cfg = cfg or ParallelConfig()
    outer = _CONTEXT
    if outer is not None:
        if outer.config != cfg:
            raise RuntimeError(
                f"parallel_session({cfg}) inside a context with another layout "
                f"({outer.config}): pass that context instead"
            )
        yield outer
        return
    ctx = initialize_parallel(cfg, seed=seed)
    try:
        yield ctx
    finally:
        destroy_parallel()


def initialize_parallel(cfg: ParallelConfig | None = None, *, seed: int = 1234) -> ParallelContext:
    """Set up torch.distributed, megatron-core's parallel state and RNG seeds.

    Idempotent for an identical config; raises :class:`ConfigError` if ``tp * pp`` does not
    divide the world size or ``dp`` disagrees with it.
    """
    global _CONTEXT
    cfg = cfg or ParallelConfig()
    if _CONTEXT is not None:
        if _CONTEXT.config == cfg:
            return _CONTEXT
        destroy_parallel(keep_process_group=True)

    from megatron.core import parallel_state, tensor_parallel

    from dsm_engine.models.cuda_bridge import install_cpu_bridge

    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        install_cpu_bridge()
        device = torch.device("cpu")

    owns = False
    if not dist.is_initialized():
        if "RANK" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            # An in-memory store: a single process needs no rendezvous, and a port picked
            # here could be taken by another process before the store binds it.
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    elif _OWNED_GROUP[0]:
        owns = True
    world = dist.get_world_size()
    if world % (cfg.tp * cfg.pp):
        raise ConfigError(
            f"world size {world} is not divisible by ParallelConfig.tp * pp = {cfg.tp * cfg.pp}"
        )
    dp = world // (cfg.tp * cfg.pp)
    if cfg.dp is not None and cfg.dp != dp:
        raise ConfigError(f"ParallelConfig.dp={cfg.dp} but world size {world} / (tp*pp) = {dp}")

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp,
        pipeline_model_parallel_size=cfg.pp,
        virtual_pipeline_model_parallel_size=cfg.virtual_pp,
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)

    _CONTEXT = ParallelContext(
        config=cfg,
        rank=dist.get_rank(),
        world_size=world,
        local_rank=local_rank,
        device=device,
        backend=backend,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        tp_size=cfg.tp,
        pp_size=cfg.pp,
        dp_size=dp,
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        pp_group=parallel_state.get_pipeline_model_parallel_group(),
        dp_group=parallel_state.get_data_parallel_group(),
        owns_process_group=owns,
    )
    return _CONTEXT


def destroy_parallel(*, keep_process_group: bool = False) -> None:
    """Tear down megatron-core's parallel state, and the process group if we created it
    (unless ``keep_process_group``, e.g. to re-initialise with another layout)."""
    global _CONTEXT
    from megatron.core import parallel_state

    from dsm_engine.models.cuda_bridge import uninstall_cpu_bridge

    ctx, _CONTEXT = _CONTEXT, None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    uninstall_cpu_bridge()  # the process is patched only while a context exists
    if keep_process_group:
        if ctx is not None and ctx.owns_process_group:
            _OWNED_GROUP[0] = True
        return
    if (ctx is not None and ctx.owns_process_group or _OWNED_GROUP[0]) and dist.is_initialized():
        _OWNED_GROUP[0] = False
        dist.destroy_process_group()
