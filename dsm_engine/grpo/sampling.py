"""Rollout + reward for one GRPO step, and weight sync from the megatron policy to the sampler.

Only the first rank of each model-parallel group (tp x pp) holds a sampler: it generates its
data-parallel share, scores it, and broadcasts the result to its TP/PP peers, so every rank of
the group trains on identical rows without sampling twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsm_engine.grpo.batch import GRPOBatch, build_batch
from dsm_engine.grpo.data import Prompt, TextCodec
from dsm_engine.rollout.base import RolloutEngine, SamplingParams


def is_sampler_rank() -> bool:
    """True on the first rank of this process's model-parallel group."""
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0


def _mp_broadcast(obj: object) -> object:
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=dist.get_process_group_ranks(group)[0], group=group)
    return holder[0]


def sync_weights(policy: torch.nn.Module, engine: RolloutEngine | None, model_cfg) -> float:
    """Gather the policy over TP/PP into a HF state dict and load it into the sampler, in
    memory. Collective: every rank calls it. Returns the seconds it took."""
    from dsm_engine.models.convert import export_hf_state_dict

    tic = time.perf_counter()
    sd = export_hf_state_dict(policy, model_cfg)
    if engine is not None:
        engine.update_weights(sd)
    return time.perf_counter() - tic


@dataclass
class Rollout:
    """One step's scored samples (identical on every rank of a model-parallel group)."""

    batch: GRPOBatch
    texts: list[str]
    correct: list[bool]
    rollout_s: float
    reward_s: float


def rollout_and_score(
    engine: RolloutEngine | None,
    reward_fn,
    codec: TextCodec,
    prompts: list[Prompt],
    n: int,
    params: SamplingParams,
    *,
    multiple_of: int = 1,
) -> Rollout:
    """Sample ``n`` responses per prompt, score them, pack the batch (collective over MP)."""
    payload = None
    if engine is not None:
        tic = time.perf_counter()
        out = engine.generate([p.token_ids for p in prompts], n, params)
        rollout_s = time.perf_counter() - tic
        tic = time.perf_counter()
        texts = [codec.decode(ids) for ids in out.token_ids]
        rows = [prompts[i] for i in out.prompt_index]
        rewards = reward_fn.score([p.text for p in rows], texts, [p.gold for p in rows])
        grades = getattr(reward_fn, "last_grades", None)
        correct = (
            [bool(g.correct) for g in grades]
            if grades is not None and len(grades) == len(texts)
            else [r > 0 for r in rewards]
        )
        reward_s = time.perf_counter() - tic
        payload = (out, texts, [float(r) for r in rewards], correct, rollout_s, reward_s)
    out, texts, rewards, correct, rollout_s, reward_s = _mp_broadcast(payload)
    batch = build_batch(
        [prompts[i].token_ids for i in out.prompt_index],
        out.token_ids,
        out.logprobs,
        rewards,
        out.finished,
        pad_id=codec.pad_id,
        multiple_of=multiple_of,
    )
    return Rollout(batch, texts, correct, rollout_s, reward_s)


def evaluate_greedy(
    engine: RolloutEngine | None,
    reward_fn,
    codec: TextCodec,
    prompts: list[Prompt],
    *,
    max_new_tokens: int,
    temperature: float,
) -> float:
    """Greedy exact-match accuracy on ``prompts`` (collective over MP; every rank gets it)."""
    acc = None
    if engine is not None:
        params = SamplingParams(
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            stop_token_ids=[codec.eos_id],
            greedy=True,
        )
        out = engine.generate([p.token_ids for p in prompts], 1, params)
        texts = [codec.decode(ids) for ids in out.token_ids]
        scores = reward_fn.score([p.text for p in prompts], texts, [p.gold for p in prompts])
        grades = getattr(reward_fn, "last_grades", None)
        hits = [g.correct for g in grades] if grades is not None else [s > 0 for s in scores]
        acc = sum(hits) / len(hits)
    return float(_mp_broadcast(acc))
