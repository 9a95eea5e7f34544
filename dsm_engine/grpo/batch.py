"""Turning prompts and sampled responses into the padded tensors of a GRPO update.

Row ``j`` is ``prompt + response`` shifted by one: ``tokens[j, t]`` is fed to the model and
``targets[j, t]`` is the token it must predict; ``mask[j, t]`` marks the targets that are
response tokens (the only ones the loss sees). Rows are right-padded (causal attention makes
the padding invisible to real tokens) to a common ``T`` rounded up to ``multiple_of``
(the tensor-parallel size under sequence parallelism).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class GRPOBatch:
    """A rollout batch as tensors; ``B`` rows grouped by prompt (``group_size`` each).

    tokens, targets: ``(B, T)`` int64. mask: ``(B, T)`` bool (response targets).
    sampler_logp: ``(B, T)`` fp32 log-probs the sampler gave the targets (0 where masked).
    rewards: ``(B,)`` fp32. response_len: ``(B,)`` int64. finished: ``(B,)`` bool.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    sampler_logp: torch.Tensor
    rewards: torch.Tensor
    response_len: torch.Tensor
    finished: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, sl: slice) -> GRPOBatch:
        """The batch restricted to rows ``sl`` (a microbatch)."""
        return GRPOBatch(*(getattr(self, f)[sl] for f in self.__dataclass_fields__))

    def to(self, device: torch.device) -> GRPOBatch:
        return GRPOBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    sampler_logps: Sequence[Sequence[float]],
    rewards: Sequence[float],
    finished: Sequence[bool],
    *,
    pad_id: int,
    multiple_of: int = 1,
    tool_mask: Sequence[Sequence[bool]] | None = None,
) -> GRPOBatch:
    """Pack ``B`` rows (prompt ``prompt_ids[j]`` answered by ``response_ids[j]``).

    tool_mask[j][t]: response token ``t`` of row ``j`` was written by a tool (an interpreter
    output), so it is a target the loss must not see (``mask`` False there).

    Raises ValueError naming the row whose lengths disagree or whose prompt is empty.
    """
    b = len(response_ids)
    for name, seq in (
        ("prompt_ids", prompt_ids),
        ("sampler_logps", sampler_logps),
        ("rewards", rewards),
        ("finished", finished),
    ):
        if len(seq) != b:
            raise ValueError(f"{name} has {len(seq)} rows, response_ids has {b}")
    if tool_mask is not None and len(tool_mask) != b:
        raise ValueError(f"tool_mask has {len(tool_mask)} rows, response_ids has {b}")
    for j in range(b):
        if len(prompt_ids[j]) == 0:
            raise ValueError(f"prompt_ids[{j}] is empty")
        if len(sampler_logps[j]) != len(response_ids[j]):
            raise ValueError(
                f"sampler_logps[{j}] has {len(sampler_logps[j])} values for "
                f"{len(response_ids[j])} response tokens"
            )
        if tool_mask is not None and len(tool_mask[j]) != len(response_ids[j]):
            raise ValueError(
                f"tool_mask[{j}] has {len(tool_mask[j])} flags for "
                f"{len(response_ids[j])} response tokens"
            )
    t = max(len(p) + len(r) - 1 for p, r in zip(prompt_ids, response_ids))
    t = -(-t // multiple_of) * multiple_of
    tokens = torch.full((b, t), pad_id, dtype=torch.long)
    targets = torch.full((b, t), pad_id, dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.bool)
    slogp = torch.zeros((b, t), dtype=torch.float32)
    for j, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = torch.tensor([*p, *r], dtype=torch.long)
        n = len(seq) - 1
        tokens[j, :n] = seq[:-1]
        targets[j, :n] = seq[1:]
        start = len(p) - 1  # position whose target is the first response token
        mask[j, start:n] = True
        if tool_mask is not None and len(r):
            mask[j, start:n] &= ~torch.tensor(list(tool_mask[j]), dtype=torch.bool)
        slogp[j, start:n] = torch.tensor(sampler_logps[j], dtype=torch.float32)
    return GRPOBatch(
        tokens=tokens,
        targets=targets,
        mask=mask,
        sampler_logp=slogp,
        rewards=torch.tensor(list(rewards), dtype=torch.float32),
        response_len=torch.tensor([len(r) for r in response_ids], dtype=torch.long),
        finished=torch.tensor(list(finished), dtype=torch.bool),
    )
