"""AdamW with gradient clipping, as megatron-core's optimizer or as plain ``torch.optim.AdamW``.

Two backends, chosen by ``optim.backend``:

* ``megatron`` (GPU runs): the model chunks are wrapped in megatron-core's
  ``DistributedDataParallel`` (contiguous grad buffers, overlapped reduce) and stepped by
  ``get_megatron_optimizer`` — fp32 master weights for bf16 models, clipping, and with
  ``distributed_optimizer`` the optimizer state sharded over data-parallel ranks.
* ``torch`` (the default; what runs on CPU): ``torch.optim.AdamW`` over the local shard.
  Gradients are averaged over the data-parallel group, and the clipping norm is the global
  norm over all TP/PP shards, counting parameters replicated across TP ranks (norm weights)
  once — the same quantity megatron computes, so both backends take the same steps in fp32.
  With tied input/output embeddings and pp > 1, megatron-core keeps a copy of the word
  embedding on the last stage as the output layer (``shared_embedding=True`` on both copies,
  ``shared=True`` on the last stage's). As megatron's ``finalize_model_grads`` does, the two
  copies' gradients are summed over the embedding group (first and last stage) so both take
  the pp=1 step, and like megatron's grad norm the ``shared`` copy is left out of the norm.
  Under sequence parallelism each TP rank runs the norms on its own slice of the tokens, so
  the norm weights (marked ``sequence_parallel`` by megatron-core) hold partial gradients;
  they are summed over the TP group before the norm and the step, as megatron's
  ``finalize_model_grads`` does, or the replicas drift apart.

Checked against megatron-core 0.16.1. Its ``get_megatron_optimizer`` marks norm/bias
parameters with ``wd_mult=0`` but builds the torch/TE Adam with one ``weight_decay`` for every
group; megatron's ``OptimizerParamScheduler`` applies ``wd_mult`` at each step, and our loop
does not use that scheduler, so the groups' ``weight_decay`` is set here once. With
``clip_grad=0`` megatron would skip the norm (``None``/``0.0``); an infinite threshold keeps
the norm for logging and never clips. On CPU, DDP and the fp32 optimizer run (gloo); the bf16
(``Float16OptimizerWithFloat16Params``) and distributed optimizers accept only
``torch.cuda.*Tensor`` parameters, so those need a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from dsm_engine.config import ConfigError


@dataclass
class OptimConfig:
    """AdamW (β1 0.9, β2 0.95, weight decay 0.1 as in the paper) and clipping at ``clip_grad``
    (0 disables). Norm and bias parameters get no weight decay. The learning rate comes from the
    schedule."""

    backend: Literal["torch", "megatron"] = "torch"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False

    def __post_init__(self) -> None:
        if self.distributed_optimizer and self.backend != "megatron":
            raise ConfigError("optim.distributed_optimizer needs optim.backend=megatron")
        if self.overlap_grad_reduce and self.backend != "megatron":
            raise ConfigError("optim.overlap_grad_reduce needs optim.backend=megatron")
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad must be >= 0, got {self.clip_grad}")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.dim() < 2 or name.endswith(".bias")


class TorchAdamW:
    """``torch.optim.AdamW`` over this rank's shard with DP averaging and global-norm clipping.

    Exposes the slice of megatron's optimizer interface the loop uses: ``zero_grad()``,
    ``step() -> (ok, grad_norm, None)``, ``param_groups``, ``state_dict()``/``load_state_dict()``.
    """

    def __init__(self, chunks: list[torch.nn.Module], cfg: OptimConfig) -> None:
        from megatron.core import parallel_state

        decay, no_decay = [], []
        for chunk in chunks:
            for name, p in chunk.named_parameters():
                if p.requires_grad:
                    (no_decay if _no_decay(name, p) else decay).append(p)
        self.params = decay + no_decay
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=0.0,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
        )
        self.dp_group = parallel_state.get_data_parallel_group()
        self.mp_group = parallel_state.get_model_parallel_group()
        self.embd_group, self.tied_embedding = _tied_embedding_copy(self.params)
        self.tp_group = parallel_state.get_tensor_model_parallel_group()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _average_over_dp(self) -> None:
        if dist.get_world_size(self.dp_group) == 1:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.dp_group)
        flat /= dist.get_world_size(self.dp_group)
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def _sum_tied_embedding_grads(self) -> None:
        # The first stage's embedding and the last stage's output layer are one weight of the
        # model: its gradient is the sum of both uses (megatron's _allreduce_word_embedding_grads).
        if self.tied_embedding is not None:
            dist.all_reduce(self.tied_embedding.grad, group=self.embd_group)

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients over every TP/PP shard, each weight counted once
        (TP replicas and the last stage's copy of a tied embedding are skipped)."""
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
        from megatron.core.transformer.module import param_is_not_shared

        sq = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        for p in self.params:
            if (
                p.grad is not None
                and param_is_not_shared(p)
                and param_is_not_tensor_parallel_duplicate(p)
            ):
                sq += p.grad.detach().double().pow(2).sum()
        dist.all_reduce(sq, group=self.mp_group)
        return float(sq.sqrt())

    def step(self) -> tuple[bool, float, None]:
        """Average grads over DP, sum sequence-parallel norms' over TP and a tied
        embedding's over its stages, clip to ``clip_grad``, take an AdamW step."""
        for p in self.params:
            if p.grad is None:  # a shard that took no part in the loss still steps in lockstep
                p.grad = torch.zeros_like(p)
        self._average_over_dp()
        allreduce_sequence_parallel_grads(self.params, self.tp_group)
        self._sum_tied_embedding_grads()
        norm = self.grad_norm()
        if self.cfg.clip_grad > 0 and norm > self.cfg.clip_grad:
            coef = self.cfg.clip_grad / (norm + 1e-6)
            for p in self.params:
                p.grad.mul_(coef)
        self.optimizer.step()
        return True, norm, None

    def _ensure_state(self) -> None:
        # Zero Adam state for every parameter, so a loading template has every tensor.
        for p in self.params:
            st = self.optimizer.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def sharded_state_dict(
        self, model_sharded_state_dict: dict[str, Any], is_loading: bool = False, **_: Any
    ) -> dict[str, Any]:
        """Optimizer state as megatron dist-checkpointing tensors keyed like the parameters
        (so it reloads at another TP/PP layout); the shared Adam step is stored once."""
        from megatron.core.dist_checkpointing.optimizer import (
            get_param_id_to_sharded_param_map,
            optim_state_to_sharding_state,
        )

        if is_loading:
            self._ensure_state()
        state = self.optimizer.state_dict()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, params)
        steps = {float(s["step"]) for s in state["state"].values() if "step" in s}
        if len(steps) > 1:
            raise RuntimeError(f"optimizer: parameters are at different steps {sorted(steps)}")
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        if steps:
            state["state"]["common_step"] = steps.pop()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`sharded_state_dict` saved (after dist-checkpoint loading)."""
        step = state["state"].pop("common_step", None)
        if step is not None:
            for s in state["state"].values():
                s["step"] = torch.tensor(float(step))
        self.optimizer.load_state_dict(state)


def allreduce_sequence_parallel_grads(
    params: list[torch.nn.Parameter], tp_group: dist.ProcessGroup
) -> None:
    """Sum over ``tp_group`` the gradients of the parameters marked ``sequence_parallel``
    (megatron-core's ``_allreduce_non_tensor_model_parallel_grads``): replicated on every TP
    rank, but each rank's gradient comes from its slice of the sequence only. megatron-core
    sets the mark to ``config.sequence_parallel``, so without sequence parallelism nothing
    is reduced."""
    if dist.get_world_size(tp_group) == 1:
        return
    grads = [
        p.grad for p in params if getattr(p, "sequence_parallel", False) and p.grad is not None
    ]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=tp_group)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def _tied_embedding_copy(
    params: list[torch.nn.Parameter],
) -> tuple[dist.ProcessGroup | None, torch.nn.Parameter | None]:
    """``(embedding group, this rank's copy)`` of a word embedding tied to the output layer
    across pipeline stages, or ``(None, None)`` when this rank holds no such copy (pp=1, untied
    weights, a middle stage). megatron-core marks the copies ``shared_embedding`` only when
    pp > 1 (at pp=1 the one weight already receives both gradients)."""
    from megatron.core import parallel_state

    tied = [p for p in params if getattr(p, "shared_embedding", False)]
    if not tied:
        return None, None
    if len(tied) > 1:
        raise RuntimeError(f"optimizer: {len(tied)} tied-embedding copies on one rank, expected 1")
    group = parallel_state.get_embedding_group(check_initialized=False)
    if group is None or dist.get_world_size(group) == 1:
        return None, None
    if dist.get_rank() not in dist.get_process_group_ranks(group):
        raise RuntimeError("optimizer: a tied-embedding copy on a rank outside the embedding group")
    return group, tied[0]


def wrap_and_build_optimizer(
    chunks: list[torch.nn.Module], cfg: OptimConfig, *, bf16: bool
) -> tuple[list[torch.nn.Module], Any, Callable[[], None]]:
    """Return ``(chunks, optimizer, zero_grad)`` for ``cfg.backend``.

    With ``megatron`` the returned chunks are megatron-core DDP wrappers and the models'
    ``TransformerConfig`` gets the hooks the pipeline schedules call (no_sync, finalize grads).
    """
    if cfg.backend == "torch":
        if bf16:
            raise ConfigError(
                "bfloat16 training keeps fp32 master weights in megatron-core's optimizer: "
                "set optim.backend=megatron"
            )
        opt = TorchAdamW(chunks, cfg)
        return chunks, opt, opt.zero_grad

    on_cuda = all(p.is_cuda for c in chunks for p in c.parameters())
    if (bf16 or cfg.distributed_optimizer) and not on_cuda:
        raise ConfigError(
            "optim.backend=megatron with bf16 or optim.distributed_optimizer needs CUDA "
            "parameters: megatron-core's mixed-precision and distributed optimizers reject "
            "CPU tensors (fp32 without the distributed optimizer runs on CPU)"
        )
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.overlap_grad_reduce,
        use_distributed_optimizer=cfg.distributed_optimizer,
    )
    wrapped = [
        DistributedDataParallel(config=c.config, ddp_config=ddp_cfg, module=c) for c in chunks
    ]
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=0.0,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        adam_eps=cfg.eps,
        clip_grad=cfg.clip_grad if cfg.clip_grad > 0 else float("inf"),
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=cfg.distributed_optimizer,
    )
    opt = get_megatron_optimizer(opt_cfg, wrapped)
    for group in opt.param_groups:  # what OptimizerParamScheduler would do (see module doc)
        group["weight_decay"] = cfg.weight_decay * group.get("wd_mult", 1.0)
    tcfg = chunks[0].config
    tcfg.no_sync_func = [w.no_sync for w in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    tcfg.finalize_model_grads_func = finalize_model_grads

    def zero_grad() -> None:
        for w in wrapped:
            w.zero_grad_buffer()
        opt.zero_grad()

    return wrapped, opt, zero_grad


def grad_finalizer(cfg: OptimConfig, chunks: list[torch.nn.Module]) -> Callable[[], None] | None:
    """What a loop that runs its own backward passes (outside megatron's schedule, which
    finalizes by itself) calls before the optimizer step: megatron's ``finalize_model_grads``
    of ``chunks`` under ``optim.backend: megatron``; None under ``torch``, whose optimizer
    reduces the gradients in its ``step``."""
    if cfg.backend != "megatron":
        return None
    from megatron.core.distributed import finalize_model_grads

    return lambda: finalize_model_grads(chunks)
