"""The training loop shared by ``dsm train pretrain`` and ``dsm train sft``.

One optimizer step = one call of megatron-core's ``get_forward_backward_func()`` over this
rank's microbatches (gradient accumulation; the 1F1B pipeline schedule when pp > 1), then an
optimizer step at the scheduled learning rate. The loss is the mean over every loss token of the
global batch: each microbatch's summed token loss is scaled by ``dp * num_microbatches /
global_loss_tokens`` (the schedule divides by the microbatch count, data-parallel averaging
by ``dp``), so packed and unpacked batches, any microbatch split and any parallel layout give
the same loss and gradients.

Resume: a checkpoint holds model, optimizer, the step (which fixes the learning rate and the
data position, see ``data.global_batch``) and every rank's RNG states.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dsm_engine.models.config import ModelConfig
from dsm_engine.models.hf_tokenizer import checkpoint_tokenizer
from dsm_engine.models.parallel import ParallelContext
from dsm_engine.trainers.config import RunConfig
from dsm_engine.trainers.data import global_batch
from dsm_engine.trainers.flops import train_flops_per_token
from dsm_engine.trainers.metrics import (
    MetricsLogger,
    memory_stats,
    peak_flops_per_device,
    throughput,
)
from dsm_engine.trainers.optim import wrap_and_build_optimizer
from dsm_engine.trainers.profiling import StepProfiler, StepWork, true_peak_gib
from dsm_engine.trainers.run_dir import RunDir, prepare_run_dir
from dsm_engine.trainers.schedules import apply_lr, lr_at

StepHook = Callable[[int, dict[str, float]], None]
DatasetFactory = Callable[[RunDir, ModelConfig], Any]


def rng_states() -> dict[str, Any]:
    """This process's RNG states: python, numpy, torch (CPU and CUDA), megatron's TP tracker."""
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _forward_step(ctx: ParallelContext, scale: float) -> Callable:
    """megatron's ``forward_step_func``: one microbatch through one model chunk."""

    def forward_step(data_iterator: Any, model: torch.nn.Module):
        mb = {k: v.to(ctx.device, non_blocking=True) for k, v in next(data_iterator).items()}
        # Packed SFT rows carry per-token document ids; pretraining rows may carry megatron's
        # boolean mask (reset_attention_mask). Both are understood by the model's attention.
        mask = mb.get("doc_ids", mb.get("attention_mask"))
        out = model(mb["tokens"], mb["position_ids"], mask, labels=mb["labels"])
        loss_mask = mb["loss_mask"]

        def loss_func(token_loss: torch.Tensor):
            loss_sum = (token_loss.float() * loss_mask).sum()
            return loss_sum * scale, {"loss_sum": loss_sum.detach()}

        return out, loss_func

    return forward_step


def _global_tokens(microbatches: list[dict[str, torch.Tensor]], ctx: ParallelContext) -> float:
    """Loss tokens in the whole global batch (all data-parallel ranks)."""
    local = sum(float(mb["loss_mask"].sum()) for mb in microbatches)
    # On the compute device: NCCL reduces only CUDA tensors.
    n = torch.tensor([local], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(n, group=ctx.dp_group)
    return float(n)


def _reduce_loss(
    reduced: list[dict[str, torch.Tensor]], ctx: ParallelContext, tokens: float
) -> float:
    """Global mean token loss; only the last pipeline stage holds the per-microbatch sums."""
    s = sum(float(r["loss_sum"]) for r in reduced) if reduced else 0.0
    t = torch.tensor([s], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, group=ctx.pp_group)
    dist.all_reduce(t, group=ctx.dp_group)
    return float(t) / max(tokens, 1.0)


def _save(run: RunDir, step: int, chunks: list[torch.nn.Module], opt: Any) -> None:
    from dsm_engine.models.checkpoint import save_checkpoint

    extra = {"step": step, "rng": rng_states()}  # the checkpoint layer keeps one per rank
    save_checkpoint(run.checkpoints, step, _model_arg(chunks), optimizer=opt, extra=extra)


def _model_arg(chunks: list[torch.nn.Module]) -> Any:
    return chunks[0] if len(chunks) == 1 else chunks


def train(
    cfg: RunConfig,
    make_dataset: DatasetFactory,
    *,
    description: str,
    tokenizer: str | None = None,
    on_step_end: StepHook | None = None,
) -> list[float]:
    """Run (or resume) the configured training; returns the losses of the steps it ran.

    ``make_dataset(run_dir, model_cfg)`` builds the dataset after the run folder is prepared.
    ``tokenizer``: the one the data was encoded with (default: the one saved with
    ``checkpoint.load``), kept with the checkpoints so exports carry it.
    ``on_step_end(step, metrics)`` is called after each finished step (1-based).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from dsm_engine.models.build import build_model_chunks
    from dsm_engine.models.checkpoint import load_checkpoint
    from dsm_engine.models.parallel import initialize_parallel

    model_cfg = cfg.model_config()
    ctx = initialize_parallel(cfg.parallel, seed=cfg.train.seed)
    run = prepare_run_dir(
        cfg.run_dir,
        cfg,
        overwrite=cfg.overwrite,
        resume=cfg.resume,
        tokenizer=tokenizer or checkpoint_tokenizer(cfg.checkpoint.load),
    )
    dataset = make_dataset(run, model_cfg)

    chunks = build_model_chunks(model_cfg, ctx)
    for c in chunks:
        if cfg.train.recompute == "full":
            c.config.recompute_granularity = "full"
            c.config.recompute_method = "uniform"
            c.config.recompute_num_layers = 1
    bf16 = model_cfg.params_dtype == "bfloat16"
    chunks, opt, zero_grad = wrap_and_build_optimizer(chunks, cfg.optim, bf16=bf16)

    start = 0
    if run.resume_from is not None:
        extra = load_checkpoint(run.resume_from, _model_arg(chunks), optimizer=opt)
        start = int(extra["step"])
        set_rng_states(extra["rng"])
    elif cfg.checkpoint.load:
        load_checkpoint(cfg.checkpoint.load, _model_arg(chunks))

    fwd_bwd = get_forward_backward_func()
    t = cfg.train
    seq = model_cfg.seq_length
    flops = train_flops_per_token(model_cfg)
    peak = cfg.profile.peak_tflops * 1e12 if cfg.profile.peak_tflops else peak_flops_per_device()
    losses: list[float] = []
    log = MetricsLogger(
        run.path,
        total_steps=t.steps,
        start_step=start,
        enabled=ctx.rank == 0,
        tensorboard=cfg.logging.tensorboard,
        progress=cfg.logging.progress,
        description=description,
    )
    prof = StepProfiler(
        cfg.profile, run_dir=run.path, device=ctx.device, rank=ctx.rank, start_step=start
    )
    with run, log, prof:  # the run folder stays locked until the run ends
        for step in range(start, t.steps):
            prof.begin_step(step + 1)
            tic = time.perf_counter()
            with prof.phase("data"):
                lr = lr_at(cfg.schedule, step, t.steps)
                apply_lr(opt, lr)
                mbs = global_batch(
                    dataset,
                    step,
                    global_batch_size=t.global_batch_size,
                    micro_batch_size=t.micro_batch_size,
                    dp_rank=ctx.dp_rank,
                    dp_size=ctx.dp_size,
                )
                tokens = _global_tokens(mbs, ctx)
            scale = ctx.dp_size * len(mbs) / max(tokens, 1.0)
            with prof.phase("forward_backward"):
                zero_grad()
                reduced = fwd_bwd(
                    forward_step_func=_forward_step(ctx, scale),
                    data_iterator=[iter(mbs) for _ in chunks] if len(chunks) > 1 else iter(mbs),
                    model=chunks if len(chunks) > 1 else chunks[0],
                    num_microbatches=len(mbs),
                    seq_length=seq,
                    micro_batch_size=t.micro_batch_size,
                    forward_only=False,
                )
            with prof.phase("optimizer"):
                _, grad_norm, _ = opt.step()
            loss = _reduce_loss(reduced, ctx, tokens)
            losses.append(loss)
            done = step + 1
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            secs = time.perf_counter() - tic
            metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time_s": secs}
            metrics.update(
                throughput(
                    t.global_batch_size * seq,
                    secs,
                    flops_per_token=flops,
                    num_devices=ctx.world_size,
                    peak_flops=peak,
                )
            )
            metrics.update(memory_stats())
            if done % cfg.checkpoint.every == 0 or done == t.steps:
                with prof.phase("checkpoint"):
                    _save(run, done, chunks, opt)
            step_tokens = t.global_batch_size * seq
            work = StepWork(train_tokens=step_tokens, train_flops=step_tokens * flops)
            metrics.update(prof.end_step(work, num_devices=ctx.world_size))
            if (peak_gib := true_peak_gib(metrics)) is not None:
                metrics["mem_gib"] = max(metrics["mem_gib"], peak_gib)
            if done % cfg.logging.every == 0 or done == t.steps:
                log.log(done, metrics)
            if on_step_end is not None:
                on_step_end(done, metrics)
    return losses
