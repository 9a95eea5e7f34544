"""The rollout interface: sample ``n`` responses per prompt and report the sampler's log-probs.

Every backend (``hf``: transformers ``generate``; ``vllm``: optional) implements
:class:`RolloutEngine`; ``rollout.factory.build_rollout_engine`` picks one by name. This module
holds only the types the engines share, so it imports none of them. Responses of prompt ``i``
are rows ``i*n .. i*n+n-1`` of the result, the grouping the GRPO loss expects. ``logprobs[j][t]`` is the log-probability the sampler gave
token ``token_ids[j][t]``, under ``softmax(logits / temperature)`` (before top-p truncation is
renormalised: with ``top_p=1`` it is exactly the distribution sampled from), so the trainer can
compare it with its own recomputation (the rollout/trainer mismatch).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from dsm_engine.config import ConfigError


@dataclass
class SamplingParams:
    """How responses are sampled.

    temperature: softmax temperature (> 0; the trainer recomputes log-probs at the same one).
    top_p: nucleus mass (1.0 = plain sampling, the on-policy setting).
    max_new_tokens: response length cap (the paper: 1,024 tokens in all).
    stop_token_ids: tokens that end a response (kept as its last token).
    seed: sampling seed (the same seed and weights give the same samples on CPU).
    greedy: take the most likely token instead of sampling (evaluation); log-probs are still
        those of ``softmax(logits / temperature)``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int = 0
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"rollout.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"rollout.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class ToolUse:
    """One sample's tool use: code blocks run, of them failed (error, timeout, ...), the
    wall-clock seconds spent waiting for the sandbox, and whether it asked for more runs than
    ``max_rounds`` allowed."""

    rounds: int = 0
    failed_executions: int = 0
    sandbox_s: float = 0.0
    hit_round_limit: bool = False


@dataclass
class RolloutBatch:
    """Sampled responses: ``len(prompts) * n`` rows grouped by prompt.

    token_ids[j]: the response tokens of row ``j`` (a stop token, if hit, is the last one).
    logprobs[j]: the sampler's fp32 log-prob of each of those tokens.
    finished[j]: whether row ``j`` ended on a stop token (False: cut at ``max_new_tokens``).
    prompt_index[j]: index of the prompt that row ``j`` answers (``j // n``).
    tool_mask[j][t]: token ``t`` of row ``j`` was written by the tool (an interpreter output
        appended by tool-integrated sampling), not sampled; its log-prob is 0. None: no tools.
    tool_use[j]: what tool-integrated sampling did for row ``j`` (None: no tools).
    """

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]
    prompt_index: list[int]
    tool_mask: list[list[bool]] | None = None
    tool_use: list[ToolUse] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


class RolloutEngine(abc.ABC):
    """A sampler holding its own copy of the policy weights."""

    @abc.abstractmethod
    def generate(
        self, prompts_token_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> RolloutBatch:
        """Sample ``n`` responses for each prompt (token ids, no padding)."""

    @abc.abstractmethod
    def update_weights(self, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a full Hugging Face Llama state dict in memory (no disk round trip)."""


def check_prompts(prompts_token_ids: Sequence[Sequence[int]], n: int, vocab_size: int) -> None:
    """Raise ValueError naming the first bad prompt or ``n``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(prompts_token_ids) == 0:
        raise ValueError("prompts_token_ids is empty")
    for i, p in enumerate(prompts_token_ids):
        if len(p) == 0:
            raise ValueError(f"prompts_token_ids[{i}] is empty")
        bad = [t for t in p if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"prompts_token_ids[{i}] has ids outside [0, {vocab_size}): {bad[:5]}")
