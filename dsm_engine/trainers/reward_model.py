"""``dsm train rm --kind orm|prm``: train an outcome or process reward model.

    dsm train rm --config configs/rm/tiny-prm.yaml --kind prm data.train_path=labels.jsonl \
        checkpoint.load=runs/policy/checkpoints
    torchrun --nproc_per_node 2 -m dsm_engine.cli train rm --config ... parallel.tp=2

The model is the policy architecture with a scalar head (``dsm_engine.reward_models.model``),
initialised from a policy checkpoint (``checkpoint.load``; the paper trains the reward model
from the base model at lr 2e-5) or continued from an earlier reward-model checkpoint, whose
replay buffer then supplies ``replay.ratio`` (10%) of every batch (iterative RL, §4.1.4). The
buffer is saved with every checkpoint; the final checkpoint's buffer also holds this run's
training data, ready for the next iteration. Metrics: loss, and accuracy / AUC on the held-out
split (``data.eval_path``, or an ``eval_fraction`` of the training rows).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from dsm_engine.config import ConfigError
from dsm_engine.reward_models.data import RMExample, collate, count_labels, read_examples, truncate
from dsm_engine.reward_models.losses import bce_at_positions, gather_scores
from dsm_engine.reward_models.metrics import accuracy, auc
from dsm_engine.reward_models.replay import MixedBatcher, ReplayBuffer, ReplayConfig
from dsm_engine.trainers.common import run_main
from dsm_engine.trainers.config import RunConfig
from dsm_engine.trainers.flops import train_flops_per_token
from dsm_engine.trainers.profiling import StepWork
from dsm_engine.trainers.schedules import ScheduleConfig, apply_lr, lr_at
from dsm_engine.trainers.session import (
    CheckpointHooks,
    SessionOptions,
    StepHook,
    StepResult,
    TrainingSession,
)


@dataclass
class RMDataConfig:
    """Labelled examples (JSON Lines from ``dsm rm label``). ``eval_path`` is the held-out
    split; without it the last ``eval_fraction`` of a seeded shuffle of ``train_path`` is."""

    train_path: str = ""
    eval_path: str = ""
    eval_fraction: float = 0.1
    pad_id: int = 0
    seed: int = 1234

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class RMEvalConfig:
    """Held-out accuracy / AUC every ``every`` steps (0: only at the end)."""

    every: int = 0
    micro_batch_size: int = 8


@dataclass
class RMScheduleConfig(ScheduleConfig):
    """The schedule with the paper's reward-model defaults: constant 2e-5, no warm-up."""

    name: Literal["multistep", "cosine", "constant"] = "constant"
    lr: float = 2e-5
    warmup_steps: int = 0


@dataclass
class RewardModelConfig(RunConfig):
    """``dsm train rm``: an ORM (label per response) or PRM (label per step) on the policy
    architecture with a scalar head. lr defaults to the paper's 2e-5 (constant)."""

    kind: Literal["orm", "prm"] = "orm"
    data: RMDataConfig = field(default_factory=RMDataConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    eval: RMEvalConfig = field(default_factory=RMEvalConfig)
    schedule: RMScheduleConfig = field(default_factory=RMScheduleConfig)


def split_data(cfg: RewardModelConfig, seq_len: int) -> tuple[list[RMExample], list[RMExample]]:
    """(train, held-out) examples, truncated to ``seq_len`` (unlabelled leftovers dropped)."""
    if not cfg.data.train_path:
        raise ConfigError("data.train_path is required (JSON Lines from `dsm rm label`)")
    train = read_examples(cfg.data.train_path, cfg.kind, "data.train_path")
    if cfg.data.eval_path:
        held = read_examples(cfg.data.eval_path, cfg.kind, "data.eval_path")
    else:
        order = list(range(len(train)))
        random.Random(cfg.data.seed).shuffle(order)
        n_eval = int(len(train) * cfg.data.eval_fraction)
        held = [train[i] for i in order[len(order) - n_eval :]] if n_eval else []
        train = [train[i] for i in order[: len(order) - n_eval]]
    fit = lambda rows: [t for t in (truncate(e, seq_len) for e in rows) if t is not None]  # noqa: E731
    train, held = fit(train), fit(held)
    if not train:
        raise ValueError("data.train_path: no example fits model.seq_length")
    return train, held


def _forward_step(ctx, kind: str, scale: float, collect: bool) -> Callable:
    def forward_step(data_iterator: Any, model: torch.nn.Module):
        mb = {k: v.to(ctx.device) for k, v in next(data_iterator).items()}
        tokens = mb["tokens"]
        pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        out = model(tokens, pos, None)

        def loss_func(scores: torch.Tensor):
            loss_sum, count = bce_at_positions(scores, mb["positions"], mb["labels"], mb["mask"])
            info: dict[str, Any] = {"loss_sum": loss_sum.detach(), "count": count}
            if collect:
                picked = gather_scores(scores.detach(), mb["positions"])[mb["mask"]]
                info["scores"] = picked.float().cpu()
                info["labels"] = mb["labels"][mb["mask"]].cpu()
            return loss_sum * scale, info

        return out, loss_func

    return forward_step


def _microbatches(rows: list[RMExample], kind: str, size: int, seq: int, pad: int) -> list[dict]:
    return [collate(rows[s : s + size], kind, seq, pad) for s in range(0, len(rows), size)]


def _last_stage_values(ctx, values: list[float]) -> list[float]:
    """Floats known on the last pipeline stage, given to every rank."""
    t = torch.tensor(values if ctx.is_last_stage else [0.0] * len(values), dtype=torch.float64)
    if ctx.pp_size > 1:
        dist.all_reduce(t, group=ctx.pp_group)
    return t.tolist()


def evaluate(
    model, ctx, cfg: RewardModelConfig, rows: list[RMExample], seq: int
) -> dict[str, float]:
    """Held-out loss, accuracy (threshold probability 0.5) and AUC of the labelled positions."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    if not rows:
        return {}
    mbs = _microbatches(rows, cfg.kind, cfg.eval.micro_batch_size, seq, cfg.data.pad_id)
    was = model.training
    model.eval()
    # The last microbatch may hold fewer rows: at pp > 1 stages must exchange shapes first.
    config = get_model_config(model)
    saved, config.variable_seq_lengths = config.variable_seq_lengths, True
    try:
        with torch.no_grad():
            out = get_forward_backward_func()(
                forward_step_func=_forward_step(ctx, cfg.kind, 1.0, collect=True),
                data_iterator=iter(mbs),
                model=[model],
                num_microbatches=len(mbs),
                seq_length=seq,
                micro_batch_size=cfg.eval.micro_batch_size,
                forward_only=True,
            )
    finally:
        config.variable_seq_lengths = saved
        model.train(was)
    vals = [0.0] * 3
    if ctx.is_last_stage:
        s = torch.cat([o["scores"] for o in out])
        y = torch.cat([o["labels"] for o in out])
        loss = sum(float(o["loss_sum"]) for o in out) / max(len(s), 1)
        vals = [loss, accuracy(s.tolist(), y.tolist()), auc(s.tolist(), y.tolist())]
    # AUC is undefined (nan) when the held-out split has one class: reported as nan, not 0.
    loss, acc, area = _last_stage_values(ctx, vals)
    return {"eval_loss": loss, "eval_acc": acc, "eval_auc": area}


def _has_score_head(step_dir) -> bool:
    from megatron.core import dist_checkpointing

    from dsm_engine.models.checkpoint import resolve_checkpoint

    keys = dist_checkpointing.load_tensors_metadata(str(resolve_checkpoint(step_dir)))
    return any(k.endswith("score_head.weight") for k in keys)


def _rm_flops_per_token(model_cfg) -> float:
    """The policy's FLOPs with its LM head (counted when untied) swapped for the 1-wide score
    head."""
    h = model_cfg.hidden_size
    lm_head = model_cfg.vocab_size * h if model_cfg.untie_embeddings else 0
    return train_flops_per_token(model_cfg) - 6.0 * lm_head + 6.0 * h


def _check_batch(cfg: RewardModelConfig, dp_size: int) -> None:
    t = cfg.train
    if t.global_batch_size % (dp_size * t.micro_batch_size):
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} must be a multiple of "
            f"dp ({dp_size}) * train.micro_batch_size ({t.micro_batch_size})"
        )


def run_reward_model(
    cfg: RewardModelConfig, *, on_step_end: StepHook | None = None
) -> dict[str, float]:
    """Train per ``cfg``; returns the final held-out metrics (and the last loss)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from dsm_engine.models.checkpoint import load_checkpoint
    from dsm_engine.reward_models.model import build_reward_model, load_backbone

    model_cfg = cfg.model_config()
    seq = model_cfg.seq_length
    train_rows, held_rows = split_data(cfg, seq)  # bad data fails before the run folder
    t = cfg.train
    session = TrainingSession(
        cfg, SessionOptions(total_steps=t.steps, description=f"rm-{cfg.kind}")
    )
    ctx = session.ctx
    _check_batch(cfg, ctx.dp_size)
    buffer = ReplayBuffer(cfg.replay.capacity, seed=cfg.replay.seed)
    batcher = MixedBatcher(train_rows, buffer, cfg.replay.ratio, seed=t.seed)
    merged = False  # whether the buffer holds this run's training data yet

    def restore(extra: dict[str, Any]) -> None:
        nonlocal merged
        merged = bool(extra.get("merged", False))
        buffer.load_state_dict(extra["replay"])
        batcher.load_state_dict(extra["batcher"])

    def fresh() -> None:
        if not cfg.checkpoint.load:
            return
        if _has_score_head(cfg.checkpoint.load):  # an earlier reward model: continue it
            extra = load_checkpoint(cfg.checkpoint.load, model)
            if "replay" in extra:
                buffer.load_state_dict(extra["replay"])
                buffer.capacity = cfg.replay.capacity
        else:  # a policy checkpoint: its backbone, a fresh head
            load_backbone(cfg.checkpoint.load, model)

    def state(done: int) -> dict[str, Any]:
        return {
            "kind": cfg.kind,
            "replay": buffer.state_dict(),
            "batcher": batcher.state_dict(),
            "merged": merged,
        }

    with session:  # the run folder stays locked until the run ends
        (model,) = session.build(lambda ctx: [build_reward_model(model_cfg, ctx)])
        session.resume(CheckpointHooks(state=state, restore=restore, fresh=fresh))
        opt, phase = session.opt, session.phase
        fwd_bwd = get_forward_backward_func()
        per_rank = t.global_batch_size // ctx.dp_size
        flops = _rm_flops_per_token(model_cfg)

        def step_fn(step: int) -> StepResult:
            nonlocal merged
            tic = time.perf_counter()
            with phase("data"):
                lr = lr_at(cfg.schedule, step, t.steps)
                apply_lr(opt, lr)
                batch = batcher.next_batch(t.global_batch_size)  # the same on every rank
                hist = sum(h for _, h in batch)
                rows = [r for r, _ in batch]
                labelled = count_labels(rows, cfg.kind)
                mine = rows[ctx.dp_rank * per_rank : (ctx.dp_rank + 1) * per_rank]
                mbs = _microbatches(mine, cfg.kind, t.micro_batch_size, seq, cfg.data.pad_id)
            scale = ctx.dp_size * len(mbs) / max(labelled, 1)
            with phase("forward_backward"):
                session.zero_grad()
                reduced = fwd_bwd(
                    forward_step_func=_forward_step(ctx, cfg.kind, scale, collect=False),
                    data_iterator=iter(mbs),
                    model=model,
                    num_microbatches=len(mbs),
                    seq_length=seq,
                    micro_batch_size=t.micro_batch_size,
                    forward_only=False,
                )
            with phase("optimizer"):
                _, grad_norm, _ = opt.step()
            s = torch.tensor([sum(float(r["loss_sum"]) for r in reduced)], dtype=torch.float64)
            dist.all_reduce(s, group=ctx.pp_group)
            dist.all_reduce(s, group=ctx.dp_group)
            done = step + 1
            metrics = {
                "loss": float(s) / max(labelled, 1),
                "lr": lr,
                "grad_norm": grad_norm,
                "historical_frac": hist / len(batch),
                "step_time_s": time.perf_counter() - tic,
            }
            last = done == t.steps
            if last or (cfg.eval.every and done % cfg.eval.every == 0):
                with phase("eval"):
                    metrics.update(evaluate(model, ctx, cfg, held_rows, seq))
            if last and not merged:  # the next iteration replays this run's data
                buffer.add(train_rows)
                merged = True
            tokens = t.global_batch_size * seq  # rows are padded to seq
            return StepResult(metrics, StepWork(train_tokens=tokens, train_flops=tokens * flops))

        history = session.drive(step_fn, on_step_end)
    final = history[-1] if history else {}
    if not final and held_rows:
        final = evaluate(model, ctx, cfg, held_rows, seq)
    return final


def main(argv: list[str]) -> int:
    """Entry point of ``dsm train rm --kind orm|prm --config X.yaml [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="dsm train rm", add_help=False)
    parser.add_argument("--kind", choices=("orm", "prm"))
    known, rest = parser.parse_known_args(argv)
    if known.kind:
        rest = [*rest, f"kind={known.kind}"]
    return run_main("dsm train rm", RewardModelConfig, rest, run_reward_model)
