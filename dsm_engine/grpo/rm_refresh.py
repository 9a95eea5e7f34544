"""Iterative RL (DeepSeekMath §4.1.4): continue the reward model between GRPO iterations.

At each iteration boundary (``rm_update.steps > 0``), before the next iteration's first step:

1. label: the sampler ranks (one per data-parallel rank; the rollout engine already holds the
   current policy weights) sample ``rm_update.samples`` responses for their share of
   ``rm_update.prompts`` GRPO training prompts (taken from the current data position; the
   position does not advance), the answer verifier grades them (ORM labels) and, for process
   supervision, Monte-Carlo completions label every step (``reward_models.labeling``). The rows
   are gathered and rank 0 writes ``<run_dir>/reward_model/iter_<k>/labels.jsonl``;
2. train: every rank runs ``run_reward_model`` in the GRPO job's own parallel layout (so
   ``initialize_parallel`` finds the same config and leaves the policy's process groups
   alone), continuing the previous reward model (``checkpoint.load``): its replay buffer gives
   ``rm_update.replay_ratio`` of every batch, and the new labels join the buffer in the saved
   checkpoint (``iter_<k>/run/checkpoints``), which the next boundary continues;
3. switch: the caller rebuilds the scorer from the new checkpoint (:attr:`path`).

``k`` is the (0-based) iteration the new reward model serves. The GRPO checkpoint's extra stores
the current reward-model path (:meth:`state`), so a resumed run scores with the right model. A
run resumed from the checkpoint taken exactly at a boundary reuses that boundary's labels and
continues its reward-model run when a crash interrupted them (the labels came from the very
weights in that checkpoint); any other arrival at a boundary starts it afresh.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dsm_engine.config import ConfigError
from dsm_engine.grpo.config import GRPOConfig
from dsm_engine.grpo.data import PromptDataset
from dsm_engine.models.parallel import ParallelContext
from dsm_engine.reward_models.scorer import MeanScorer, TokenScorer, load_reward_fn
from dsm_engine.rollout.base import RolloutEngine, SamplingParams
from dsm_engine.text_codec import TextCodec

RM_DIR = "reward_model"
STATE_KEY = "reward_model"


def rm_kind(supervision: str) -> str:
    """The reward-model kind a supervision trains: ``orm`` for orm, ``prm`` for prm / mixed."""
    return "orm" if supervision == "orm" else "prm"


def label_rows(
    engine: RolloutEngine,
    cfg: GRPOConfig,
    codec: TextCodec,
    prompts: list,
    seed: int,
) -> list[dict[str, Any]]:
    """ORM (or ORM + Monte-Carlo step) labelled rows of the current policy on ``prompts``."""
    from dsm_engine.reward_models.labeling import (
        LabelPrompt,
        monte_carlo_step_labels,
        sample_and_grade,
        verifier_grader,
    )
    from dsm_engine.rewards.checker import SymbolicChecker

    u = cfg.rm_update
    params = SamplingParams(
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        stop_token_ids=[codec.eos_id],
        seed=seed,
    )
    todo = [LabelPrompt(p.token_ids, p.text, p.gold) for p in prompts]
    with SymbolicChecker() as checker:  # one warm checker for every grading call
        grade = verifier_grader(cfg.reward.kind, checker)
        rows = sample_and_grade(engine, todo, u.samples, params, codec.decode, grade)
        if rm_kind(cfg.reward.supervision) == "prm" and rows:
            params.seed = seed + 1
            rows = monte_carlo_step_labels(
                engine, rows, u.completions, params, codec.decode, grade, cfg.reward.delimiter
            )
    return rows


def _from_rank0(obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank."""
    if dist.get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _gather(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows, in rank order (non-sampler ranks contribute none)."""
    if dist.get_world_size() == 1:
        return rows
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def _write_atomic(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)  # a labels file that exists is complete


def _read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _label_stats(path: Path) -> dict[str, float]:
    """Rows of a labels file and the share of positive labels (ORM labels / PRM step labels)."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    flat = [v for r in rows for v in (r.get("step_labels") or [r["label"]])]
    return {"rm_rows": float(len(rows)), "rm_label_positive_frac": sum(flat) / max(len(flat), 1)}


class RewardModelRefresher:
    """Owns the current reward-model checkpoint of a GRPO run and retrains it at boundaries.

    Every rank constructs one and calls :meth:`refresh` (collective) at each boundary.
    """

    def __init__(self, cfg: GRPOConfig, run_path: Path, codec: TextCodec, dataset: PromptDataset):
        self.cfg, self.run_path, self.codec, self.dataset = cfg, Path(run_path), codec, dataset
        self.path = cfg.reward.model_path
        self.resumed_at: int | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.rm_update.steps > 0

    def check(self, dp_size: int) -> None:
        """Fail before training when retraining could not work: the reward-model batch does
        not split over ``dp_size`` ranks, or ``reward.model_path`` holds the other kind."""
        if not self.enabled:
            return
        u = self.cfg.rm_update
        if u.global_batch_size % (dp_size * u.micro_batch_size):
            raise ConfigError(
                f"rm_update.global_batch_size={u.global_batch_size} must be a multiple of the "
                f"data-parallel size ({dp_size}) * rm_update.micro_batch_size "
                f"({u.micro_batch_size})"
            )
        import torch

        from dsm_engine.models.checkpoint import resolve_checkpoint

        extra = resolve_checkpoint(self.path) / "extra" / "rank_00000.pt"
        saved = torch.load(extra, weights_only=False).get("kind") if extra.is_file() else None
        want = rm_kind(self.cfg.reward.supervision)
        if saved is not None and saved != want:
            raise ConfigError(
                f"reward.model_path: {self.path} is a {saved} checkpoint, but "
                f"reward.supervision={self.cfg.reward.supervision} retrains a {want} "
                "(its replay buffer holds the other kind's labels)"
            )

    def state(self) -> dict[str, Any]:
        """For the GRPO checkpoint's extra: the reward model the run scores with now."""
        p = Path(self.path)
        try:  # relative to the run folder when inside it: the folder may move
            return {STATE_KEY: {"path": str(p.relative_to(self.run_path)), "in_run_dir": True}}
        except ValueError:
            return {STATE_KEY: {"path": str(self.path), "in_run_dir": False}}

    def load_state(self, extra: dict[str, Any]) -> None:
        """Restore :meth:`state` from a GRPO checkpoint's extra (older checkpoints: no-op)."""
        self.resumed_at = int(extra["step"])
        saved = extra.get(STATE_KEY)
        if saved:
            p = saved["path"]
            self.path = str(self.run_path / p) if saved["in_run_dir"] else p

    def iteration_dir(self, iteration: int) -> Path:
        return self.run_path / RM_DIR / f"iter_{iteration:03d}"

    def refresh(
        self,
        step: int,
        iteration: int,
        position: int,
        engine: RolloutEngine | None,
        *,
        dp_rank: int,
        dp_size: int,
    ) -> dict[str, float]:
        """Label, continue the reward model, and point :attr:`path` at the new checkpoint.

        ``step``: GRPO steps done; ``iteration``: the iteration about to start. Collective.
        Returns ``rm_``-prefixed metrics (identical on every rank).
        """
        from dsm_engine.models.checkpoint import resolve_checkpoint
        from dsm_engine.trainers.reward_model import run_reward_model

        u = self.cfg.rm_update
        out = self.iteration_dir(iteration)
        labels = out / "labels.jsonl"
        resuming = step == self.resumed_at
        reuse = bool(_from_rank0(resuming and labels.is_file()))

        tic = time.perf_counter()
        if not reuse:
            rows: list[dict[str, Any]] = []
            if engine is not None:
                mine = self.dataset.batch(position, u.prompts)[dp_rank::dp_size]
                seed = self.cfg.train.seed * 100_003 + 7_919 * (iteration + 1) + 31 * dp_rank
                rows = label_rows(engine, self.cfg, self.codec, mine, seed)
            rows = _gather(rows)
            if not rows:
                raise ValueError(
                    "rm_update: labelling produced no rows (every sampled response was empty); "
                    "raise rollout.max_new_tokens or rm_update.samples"
                )
            if dist.get_rank() == 0:
                out.mkdir(parents=True, exist_ok=True)
                _write_atomic(rows, labels)
            dist.barrier()
        stats = _from_rank0(_label_stats(labels) if dist.get_rank() == 0 else None)
        label_s = time.perf_counter() - tic

        tic = time.perf_counter()
        run_dir = out / "run"
        rm_cfg = self._rm_config(run_dir, labels, iteration, resume=reuse)
        run_reward_model(rm_cfg)
        self.path = str(resolve_checkpoint(run_dir / "checkpoints"))
        train_s = time.perf_counter() - tic

        # From the reward-model run's metrics file: the same numbers after any resume.
        logged = _from_rank0(
            _read_metrics(run_dir / "metrics.jsonl") if dist.get_rank() == 0 else None
        )
        metrics = {"rm_time_label_s": label_s, "rm_time_train_s": train_s, **stats}
        if logged:
            last = logged[-1]
            hist = [r["historical_frac"] for r in logged if "historical_frac" in r]
            metrics["rm_historical_frac"] = sum(hist) / len(hist) if hist else 0.0
            for key in ("loss", "eval_loss", "eval_acc", "eval_auc"):
                if key in last:
                    metrics[f"rm_{key}"] = float(last[key])
        return metrics

    def _rm_config(self, run_dir: Path, labels: Path, iteration: int, *, resume: bool):
        """The ``dsm train rm`` config of one boundary: the previous reward model's
        architecture, the GRPO job's parallel layout and optimizer, ``rm_update``'s batches."""
        from dsm_engine.config import from_dict, to_dict
        from dsm_engine.models.checkpoint import read_meta, resolve_checkpoint
        from dsm_engine.trainers.reward_model import RewardModelConfig

        cfg, u = self.cfg, self.cfg.rm_update
        prev = resolve_checkpoint(self.path)
        seed = cfg.train.seed + iteration
        return from_dict(
            RewardModelConfig,
            {
                "run_dir": str(run_dir),
                "overwrite": True,
                "resume": "auto" if resume else "never",
                "kind": rm_kind(cfg.reward.supervision),
                "model": dict(read_meta(prev)["model_config"]),
                "parallel": to_dict(cfg.parallel),
                "optim": to_dict(cfg.optim),
                "schedule": {"name": "constant", "lr": u.lr, "warmup_steps": 0},
                "train": {
                    "steps": u.steps,
                    "micro_batch_size": u.micro_batch_size,
                    "global_batch_size": u.global_batch_size,
                    "seed": seed,
                },
                "checkpoint": {"every": u.steps, "load": str(prev)},
                # A second live progress bar inside the GRPO one is not allowed by rich.
                "logging": {
                    "every": 1,
                    "tensorboard": cfg.logging.tensorboard,
                    "progress": False,
                },
                "data": {
                    "train_path": str(labels),
                    "eval_fraction": u.eval_fraction,
                    "pad_id": self.codec.pad_id,
                    "seed": seed,
                },
                "replay": {"ratio": u.replay_ratio, "capacity": u.replay_capacity, "seed": seed},
                "eval": {"every": 0, "micro_batch_size": u.micro_batch_size},
            },
        )


def reward_model_scorer(
    cfg: GRPOConfig, model_path: str, ctx: ParallelContext
) -> TokenScorer | None:
    """The learned reward model's scorer (None under verifier supervision; the mean of the
    members with ``reward.ensemble``), in the policy's TP/PP layout: scoring is collective over
    the model-parallel group, whose ranks hold the same rollout rows; each data-parallel rank
    scores its own rows."""
    if cfg.reward.supervision == "verifier":
        return None
    kind = "orm" if cfg.reward.supervision == "orm" else "prm"
    scorers = [
        load_reward_fn(
            kind,
            path,
            cfg.data.tokenizer,
            ctx=ctx,
            delimiter=cfg.reward.delimiter,
            micro_batch_size=cfg.grpo.micro_batch_size,
        ).scorer
        for path in [model_path, *cfg.reward.ensemble]
    ]
    return scorers[0] if len(scorers) == 1 else MeanScorer(scorers)
