"""Reward models: the policy's megatron-core ``GPTModel`` with a scalar head instead of an LM head.

The backbone (embedding, layers, final norm) is exactly the policy's, split over TP/PP the same
way, so a reward model starts from a policy checkpoint (the paper trains its reward model from
the base model). The last pipeline stage replaces the vocab projection with ``score_head``, an
``(H, 1)`` linear with bias, replicated on every TP rank: every rank holds the full final hidden
states (gathered over the sequence under sequence parallelism) and computes identical scores,
so the head's gradients agree across TP ranks without communication.

``forward(input_ids [b, s], position_ids, attention_mask)`` returns fp32 score logits [b, s] on
the last stage (one score per position; the losses pick the positions), hidden states elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from torch import Tensor

from dsm_engine.models.build import DsmGPTModel, _unwrap, build_model
from dsm_engine.models.config import ModelConfig
from dsm_engine.models.parallel import ParallelConfig, ParallelContext

HEAD = "score_head"


class RewardGPTModel(DsmGPTModel):
    """``DsmGPTModel`` whose last stage ends in a scalar score head (no LM head)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.post_process:
            # The vocab projection is never used: drop it so it costs no memory or optimizer state.
            if hasattr(self, "output_layer"):
                del self.output_layer
            h = self.config.hidden_size
            self.score_head = torch.nn.Linear(h, 1, bias=True, dtype=self.config.params_dtype)
            if self.config.perform_initialization:
                with tensor_parallel.get_cuda_rng_tracker().fork():
                    torch.nn.init.normal_(self.score_head.weight, std=self.config.init_method_std)
            torch.nn.init.zeros_(self.score_head.bias)

    def sharded_state_dict(self, *args, **kwargs):
        # megatron's LanguageModule expects an output layer on the last stage; the score head
        # is an ordinary (replicated) child, which the generic path handles.
        post, self.post_process = self.post_process, False
        try:
            return super().sharded_state_dict(*args, **kwargs)
        finally:
            self.post_process = post

    def _postprocess(self, hidden_states, *args, **kwargs):
        if not self.post_process:
            return hidden_states
        return score_from_hidden(self, hidden_states)


def final_hidden(model: torch.nn.Module, hidden: Tensor) -> Tensor:
    """Full-sequence final hidden states [s, b, h] for a head replicated across TP ranks."""
    if _unwrap(model).config.sequence_parallel:
        # Backward splits (does not sum) the gradient: each rank's full copy is the same.
        return tensor_parallel.gather_from_sequence_parallel_region(
            hidden, tensor_parallel_output_grad=False
        )
    return hidden


def score_from_hidden(model: torch.nn.Module, hidden: Tensor) -> Tensor:
    """Score logits [b, s] (fp32) from the final-normed hidden states [s(/tp), b, h]."""
    m = _unwrap(model)
    full = final_hidden(m, hidden)
    w, b = m.score_head.weight, m.score_head.bias
    return F.linear(full.float(), w.float(), b.float()).squeeze(-1).transpose(0, 1).contiguous()


def build_reward_model(
    model_cfg: ModelConfig,
    parallel: ParallelContext | ParallelConfig | None = None,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    init_weights: bool = True,
) -> RewardGPTModel:
    """This rank's reward model (its pipeline stage and TP shard); like ``build_model``.

    The LM head is never built (embeddings are untied for the reward model, so the last stage
    needs no copy of the word embeddings). Needs ``initialize_parallel`` first.
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_reward_model: call dsm_engine.models.initialize_parallel first")
    return build_model(
        model_cfg,
        parallel,
        pre_process=pre_process,
        post_process=post_process,
        init_weights=init_weights,
        model_class=RewardGPTModel,
        tie_embeddings=False,
    )


def reward_scores(
    model: torch.nn.Module,
    input_ids: Tensor,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Score logits [b, s] fp32 for ``input_ids`` [b, s] (whole model on one stage)."""
    m = _unwrap(model)
    if not (m.pre_process and m.post_process):
        raise ValueError("reward_scores needs the whole model on one stage; use the pp schedule")
    if position_ids is None:
        b, s = input_ids.shape
        position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)
    return model(input_ids, position_ids, attention_mask)


def head_keys(prefix: str = "") -> tuple[str, str]:
    """Checkpoint keys of the score head (absent from policy checkpoints)."""
    return (f"{prefix}{HEAD}.weight", f"{prefix}{HEAD}.bias")


def load_backbone(step_dir: str | Path, model: torch.nn.Module) -> None:
    """Load a *policy* checkpoint's backbone into a reward model (any TP/PP layout).

    Every backbone tensor must be present; the LM head is ignored and the score head keeps
    its fresh initialisation. Collective (every rank calls it).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from dsm_engine.models.checkpoint import (
        CheckpointError,
        check_architecture,
        read_meta,
        resolve_checkpoint,
    )

    step_dir = resolve_checkpoint(step_dir)
    meta = read_meta(step_dir)
    m = _unwrap(model)
    saved = dict(meta["model_config"])
    saved["untie_embeddings"] = m.model_cfg.untie_embeddings  # the head is not compared
    check_architecture(saved, m.model_cfg, step_dir)
    sharded = m.sharded_state_dict()
    skip = set(head_keys())
    state = {"chunk0": {k: v for k, v in sharded.items() if k not in skip}}
    available = dist_checkpointing.load_tensors_metadata(str(step_dir))
    for v in state["chunk0"].values():
        if (
            isinstance(v, ShardedTensor)
            and f"chunk0.{v.key}" not in available
            and v.key not in available
        ):
            raise CheckpointError(
                f"{step_dir}: backbone tensor '{v.key}' missing from the checkpoint"
            )
    loaded = dist_checkpointing.load({"model": state}, str(step_dir))
    missing, unexpected = m.load_state_dict(loaded["model"]["chunk0"], strict=False)
    missing = [
        k for k in missing if not k.startswith(HEAD + ".") and not k.endswith("_extra_state")
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"{step_dir}: backbone mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
