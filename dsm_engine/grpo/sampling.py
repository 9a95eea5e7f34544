"""Rollout + reward for one GRPO step, and weight sync from the megatron policy to the sampler.

Only the first rank of each model-parallel group (tp x pp) holds a sampler: it generates its
data-parallel share, scores it, and broadcasts the result to its TP/PP peers, so every rank of
the group trains on identical rows without sampling twice.

Weight sync gathers the whole policy onto that rank only, in memory: within each pipeline
stage the TP shards are gathered onto its TP rank 0 (megatron's layout undone by
``convert.unshard_tp``), then each stage's TP rank 0 sends its layers, already under global
layer numbers (``layer_offset``), to the first stage. The other ranks never hold a full copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from dsm_engine.grpo.batch import GRPOBatch, build_batch
from dsm_engine.grpo.config import RolloutConfig
from dsm_engine.grpo.data import Prompt
from dsm_engine.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, ToolUse
from dsm_engine.rollout.tools import ToolOptions
from dsm_engine.sandbox import Sandbox, SandboxConfig
from dsm_engine.sandbox.tool_loop import ToolLoopConfig
from dsm_engine.text_codec import TextCodec


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


@torch.no_grad()
def _stage_canonical(policy: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """This pipeline stage's tensors, whole (TP shards joined) under canonical global names,
    on its TP rank 0; ``None`` on the other TP ranks. Collective over the TP group."""
    from megatron.core import parallel_state as ps

    from dsm_engine.models.convert import local_canonical, tp_split_dim, unshard_tp

    local = local_canonical(policy)
    size = ps.get_tensor_model_parallel_world_size()
    if size == 1:
        return local
    group = ps.get_tensor_model_parallel_group()
    first = ps.get_tensor_model_parallel_rank() == 0
    dst = dist.get_process_group_ranks(group)[0]
    out: dict[str, torch.Tensor] = {}
    for name, t in local.items():
        if tp_split_dim(name) is None:  # replicated on every TP rank (norm weights)
            out[name] = t
            continue
        shards = [torch.empty_like(t) for _ in range(size)] if first else None
        dist.gather(t.contiguous(), shards, dst=dst, group=group)
        if first:
            out[name] = unshard_tp(name, shards)
    return out if first else None


@torch.no_grad()
def gather_for_sampler(policy: torch.nn.Module, model_cfg) -> dict[str, torch.Tensor] | None:
    """The whole policy as a Hugging Face Llama state dict on the sampler rank (TP rank 0 of the
    first stage), ``None`` elsewhere. Collective over the TP and pipeline groups."""
    from megatron.core import parallel_state as ps

    from dsm_engine.models.convert import canonical_to_hf

    stage = _stage_canonical(policy)
    if stage is None:
        return None
    pp_size = ps.get_pipeline_model_parallel_world_size()
    if pp_size > 1:  # among the TP-rank-0 processes of every stage
        group = ps.get_pipeline_model_parallel_group()
        ranks = dist.get_process_group_ranks(group)
        pp_rank = ps.get_pipeline_model_parallel_rank()
        if pp_rank != 0:
            meta = [[(n, tuple(t.shape), t.dtype) for n, t in stage.items()]]
            dist.send_object_list(meta, dst=ranks[0], group=group)
            for t in stage.values():
                dist.send(t.contiguous(), dst=ranks[0], group=group)
            return None
        device = next(iter(stage.values())).device
        for src in ranks[1:]:
            meta = [None]
            dist.recv_object_list(meta, src=src, group=group)
            for name, shape, dtype in meta[0]:
                t = torch.empty(shape, dtype=dtype, device=device)
                dist.recv(t, src=src, group=group)
                stage[name] = t
    sd = canonical_to_hf(stage, model_cfg)
    if not model_cfg.untie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def sync_weights(policy: torch.nn.Module, engine: RolloutEngine | None, model_cfg) -> float:
    """Gather the policy over TP/PP onto the sampler rank and load it into the sampler, in
    memory. Collective: every rank calls it. Returns the seconds it took."""
    tic = time.perf_counter()
    sd = gather_for_sampler(policy, model_cfg)
    if engine is not None:
        if sd is None:
            raise RuntimeError("sync_weights: a rollout engine lives on a non-sampler rank")
        engine.update_weights(sd)
    return time.perf_counter() - tic


def tool_options(cfg: RolloutConfig, codec: TextCodec) -> ToolOptions | None:
    """The sandbox and loop settings of ``rollout.tools`` (None when it is ``none``). The
    caller owns the returned sandbox and closes it."""
    if cfg.tools == "none":
        return None
    # Programs of RL rollouts are short calculations: math only, no sympy/numpy warm-up
    # (their import per worker costs seconds and memory the policy could use).
    sandbox = Sandbox(
        SandboxConfig(
            timeout_s=cfg.tool_timeout_s, workers=cfg.tool_workers, preload=("math",), warmup=""
        )
    )
    loop = ToolLoopConfig(max_rounds=cfg.tool_max_rounds, output_chars=cfg.tool_output_chars)
    return ToolOptions(
        sandbox.start(), loop, codec.encode, codec.decode, tokenizer_json=codec.tokenizer.to_str()
    )


def tool_metrics(tool_use: list[ToolUse] | None) -> dict[str, float]:
    """Per-step tool metrics: mean code runs per sample, share of samples that ran code,
    failed runs per sample, sandbox wall-clock seconds (summed over samples)."""
    if not tool_use:
        return {}
    k = len(tool_use)
    return {
        "tool/rounds_per_sample": sum(u.rounds for u in tool_use) / k,
        "tool/call_rate": sum(u.rounds > 0 for u in tool_use) / k,
        "tool/failed_executions": sum(u.failed_executions for u in tool_use) / k,
        "tool/round_limit_frac": sum(u.hit_round_limit for u in tool_use) / k,
        "tool/sandbox_s": sum(u.sandbox_s for u in tool_use),
    }


@dataclass
class Rollout:
    """One step's scored samples (identical on every rank of a model-parallel group);
    ``tool``: :func:`tool_metrics` of the step (empty without tools)."""

    batch: GRPOBatch
    texts: list[str]
    correct: list[bool]
    rollout_s: float
    reward_s: float
    tool: dict[str, float] = field(default_factory=dict)


def _grade(
    reward_fn, codec: TextCodec, prompts: list[Prompt], out: RolloutBatch
) -> tuple[list[str], list[float], list[bool]]:
    """The texts of ``out``'s responses, their rewards, and whether each is correct (the
    grader's verdict where the reward function keeps one, else a positive reward)."""
    texts = [codec.decode(ids) for ids in out.token_ids]
    rows = [prompts[i] for i in out.prompt_index]
    rewards = reward_fn.score([p.text for p in rows], texts, [p.gold for p in rows])
    grades = getattr(reward_fn, "last_grades", None)
    correct = (
        [bool(g.correct) for g in grades]
        if grades is not None and len(grades) == len(texts)
        else [r > 0 for r in rewards]
    )
    return texts, rewards, correct


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
        texts, rewards, correct = _grade(reward_fn, codec, prompts, out)
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
        tool_mask=out.tool_mask,
    )
    return Rollout(batch, texts, correct, rollout_s, reward_s, tool_metrics(out.tool_use))


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
    params = SamplingParams(
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        stop_token_ids=[codec.eos_id],
        greedy=True,
    )
    return _accuracy(engine, reward_fn, codec, prompts, 1, params)


def evaluate_sampled(
    engine: RolloutEngine | None,
    reward_fn,
    codec: TextCodec,
    prompts: list[Prompt],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> float:
    """Mean exact-match accuracy of ``samples`` responses per prompt sampled at
    ``temperature`` (pass@1 estimated from them; collective over MP). The same ``seed`` at
    two evaluations gives both the same random numbers, so their difference is the policy's."""
    params = SamplingParams(
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        stop_token_ids=[codec.eos_id],
        seed=seed,
    )
    return _accuracy(engine, reward_fn, codec, prompts, samples, params)


def _accuracy(
    engine: RolloutEngine | None,
    reward_fn,
    codec: TextCodec,
    prompts: list[Prompt],
    n: int,
    params: SamplingParams,
) -> float:
    """The fraction of ``n`` responses per prompt graded correct (on the sampler's rank; the
    others get it by broadcast)."""
    acc = None
    if engine is not None:
        out = engine.generate([p.token_ids for p in prompts], n, params)
        _, _, correct = _grade(reward_fn, codec, prompts, out)
        acc = sum(correct) / len(correct)
    return float(_mp_broadcast(acc))
