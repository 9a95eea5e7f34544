"""The training loop shared by ``dsm train pretrain`` and ``dsm train sft``.

One optimizer step = one call of megatron-core's ``get_forward_backward_func()`` over this
rank's microbatches (gradient accumulation; the 1F1B pipeline schedule when pp > 1), then an
optimizer step at the scheduled learning rate. The loss is the mean over every loss token of the
global batch: each microbatch's summed token loss is scaled by ``dp * num_microbatches /
global_loss_tokens`` (the schedule divides by the microbatch count, data-parallel averaging
by ``dp``), so packed and unpacked batches, any microbatch split and any parallel layout give
the same loss and gradients.

Resume: a checkpoint holds model, optimizer, the step (which fixes the learning rate and the
data position, see ``data.global_batch``) and every rank's RNG states; the shell (parallel
setup, run folder, resume, logging, profiling, checkpoints) is the :mod:`session`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from dsm_engine.models.config import ModelConfig
from dsm_engine.models.hf_tokenizer import checkpoint_tokenizer
from dsm_engine.models.parallel import ParallelContext
from dsm_engine.trainers.config import RunConfig
from dsm_engine.trainers.data import global_batch
from dsm_engine.trainers.flops import train_flops_per_token
from dsm_engine.trainers.metrics import memory_stats, peak_flops_per_device, throughput
from dsm_engine.trainers.profiling import StepWork
from dsm_engine.trainers.run_dir import RunDir
from dsm_engine.trainers.schedules import apply_lr, lr_at
from dsm_engine.trainers.session import SessionOptions, StepHook, StepResult, TrainingSession

DatasetFactory = Callable[[RunDir, ModelConfig], Any]


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


def _builder(cfg: RunConfig, model_cfg: ModelConfig) -> Callable:
    def build(ctx: ParallelContext) -> list[torch.nn.Module]:
        from dsm_engine.models.build import build_model_chunks, set_activation_recompute

        chunks = build_model_chunks(model_cfg, ctx)
        set_activation_recompute(chunks, cfg.train.recompute)
        return chunks

    return build


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

    model_cfg, t = cfg.model_config(), cfg.train
    opts = SessionOptions(
        total_steps=t.steps,
        description=description,
        tokenizer=tokenizer or checkpoint_tokenizer(cfg.checkpoint.load),
    )
    session = TrainingSession(cfg, opts)
    ctx = session.ctx
    with session:  # the run folder stays locked until the run ends
        dataset = make_dataset(session.run, model_cfg)
        chunks = session.build(_builder(cfg, model_cfg))
        session.resume()
        opt, phase = session.opt, session.phase
        fwd_bwd = get_forward_backward_func()
        seq = model_cfg.seq_length
        flops = train_flops_per_token(model_cfg)
        peak = (
            cfg.profile.peak_tflops * 1e12 if cfg.profile.peak_tflops else peak_flops_per_device()
        )

        def step_fn(step: int) -> StepResult:
            tic = time.perf_counter()
            with phase("data"):
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
            with phase("forward_backward"):
                session.zero_grad()
                reduced = fwd_bwd(
                    forward_step_func=_forward_step(ctx, scale),
                    data_iterator=[iter(mbs) for _ in chunks] if len(chunks) > 1 else iter(mbs),
                    model=chunks if len(chunks) > 1 else chunks[0],
                    num_microbatches=len(mbs),
                    seq_length=seq,
                    micro_batch_size=t.micro_batch_size,
                    forward_only=False,
                )
            with phase("optimizer"):
                _, grad_norm, _ = opt.step()
            loss = _reduce_loss(reduced, ctx, tokens)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            secs = time.perf_counter() - tic
            step_tokens = t.global_batch_size * seq
            metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time_s": secs}
            metrics.update(
                throughput(
                    step_tokens,
                    secs,
                    flops_per_token=flops,
                    num_devices=ctx.world_size,
                    peak_flops=peak,
                )
            )
            metrics.update(memory_stats())
            work = StepWork(train_tokens=step_tokens, train_flops=step_tokens * flops)
            return StepResult(metrics, work)

        history = session.drive(step_fn, on_step_end)
    return [m["loss"] for m in history]
