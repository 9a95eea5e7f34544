"""GRPO advantages for each reward kind (DeepSeekMath §4.1.2-4.1.3).

``compute_advantages(kind, batch, group_size, ...)`` takes a ``GRPOBatch`` (rows = prompt +
response shifted by one: ``targets[j, t]`` is predicted from ``tokens[j, :t+1]``; ``mask``
marks response targets) and returns what ``fused_linear_grpo_loss(advantages=...)`` takes:

* ``verifier``: ``(B,)`` group-normalised ``batch.rewards`` (outcome supervision);
* ``orm``: ``(B,)`` group-normalised ORM probabilities at the last response token;
* ``prm``: ``(B, T)`` process advantages: token t sums the group-normalised step scores of the
  steps ending at or after t (``dsm_engine.kernels.process_advantages``);
* ``mixed``: ``(B, T)`` the verifier's outcome advantage on every response token plus
  ``prm_weight`` times the PRM process advantage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from dsm_engine.kernels import group_advantages, process_advantages
from dsm_engine.reward_models.scorer import TokenScorer
from dsm_engine.reward_models.step_split import DEFAULT_DELIMITER, find_step_ends

RewardKind = Literal["verifier", "orm", "prm", "mixed"]


def response_spans(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Per row ``(start, length)`` of the response in target coordinates (``mask`` (B, T))."""
    out = []
    for row in mask.bool().cpu():
        idx = row.nonzero().flatten()
        if idx.numel() == 0:
            out.append((0, 0))
            continue
        start, length = int(idx[0]), int(idx.numel())
        if int(idx[-1]) != start + length - 1:
            raise ValueError("batch.mask must mark one contiguous response span per row")
        out.append((start, length))
    return out


def split_rows(tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """``(prompt_ids, response_ids, start)`` per row, recovered from a GRPO batch."""
    spans = response_spans(mask)
    tok, tgt = tokens.cpu(), targets.cpu()
    prompts, responses = [], []
    for j, (start, length) in enumerate(spans):
        prompts.append(tok[j, : start + 1].tolist())
        responses.append(tgt[j, start : start + length].tolist())
    return prompts, responses, spans


def pad_steps(
    step_scores: Sequence[Sequence[float]],
    step_ends: Sequence[Sequence[int]],
    offsets: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, S)`` rewards, ends shifted by ``offsets[b]``, and the validity mask."""
    b = len(step_scores)
    s = max([len(e) for e in step_ends] + [1])
    rewards = torch.zeros((b, s), dtype=torch.float32)
    ends = torch.zeros((b, s), dtype=torch.int64)
    valid = torch.zeros((b, s), dtype=torch.bool)
    for i, (sc, es) in enumerate(zip(step_scores, step_ends)):
        if len(sc) != len(es):
            raise ValueError(f"row {i}: {len(sc)} step scores for {len(es)} steps")
        n = len(es)
        rewards[i, :n] = torch.tensor(list(sc), dtype=torch.float32)
        ends[i, :n] = torch.tensor([offsets[i] + e for e in es], dtype=torch.int64)
        valid[i, :n] = True
    return rewards, ends, valid


def process_token_advantages(
    step_scores: Sequence[Sequence[float]],
    step_ends: Sequence[Sequence[int]],
    starts: Sequence[int],
    group_size: int,
    seq_len: int,
    impl: str = "auto",
) -> torch.Tensor:
    """``(B, seq_len)`` process advantages in target coordinates (response token k of row b
    is target ``starts[b] + k``) from response-relative step ends and their scores."""
    rewards, ends, valid = pad_steps(step_scores, step_ends, starts)
    return process_advantages(rewards, ends, valid, group_size, seq_len, impl=impl)


def compute_advantages(
    kind: RewardKind,
    batch,
    group_size: int,
    *,
    scorer: TokenScorer | None = None,
    decode: Callable[[list[int]], str] | None = None,
    delimiter: str = DEFAULT_DELIMITER,
    prm_weight: float = 1.0,
    impl: str = "auto",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages for ``kind`` and metrics (mean learned score; mean steps per response).

    ``scorer`` (a reward model) is needed by ``orm``/``prm``/``mixed``; ``decode`` (token ids ->
    text) finds the steps for ``prm``/``mixed``. Returned on ``batch.tokens``' device.
    """
    device = batch.tokens.device
    if kind == "verifier":
        return group_advantages(batch.rewards.float(), group_size, impl=impl), {}
    if scorer is None:
        raise ValueError(f"reward.kind={kind} needs a reward model (reward.model_path)")
    prompts, responses, spans = split_rows(batch.tokens, batch.targets, batch.mask)
    if kind == "orm":
        rows = [p + r for p, r in zip(prompts, responses)]
        probs = [s[0] for s in scorer.scores_at(rows, [[len(r) - 1] for r in rows])]
        scores = torch.tensor(probs, dtype=torch.float32, device=device)
        return group_advantages(scores, group_size, impl=impl), {"rm_score": float(scores.mean())}
    if kind not in ("prm", "mixed"):
        raise ValueError(f"reward.kind must be verifier, orm, prm or mixed, got {kind!r}")
    if decode is None:
        raise ValueError(f"reward.kind={kind} needs a decode function to find steps")
    ends = [find_step_ends(r, decode, delimiter) if r else [] for r in responses]
    rows = [p + r for p, r in zip(prompts, responses)]
    pos = [[len(p) + e for e in es] for p, es in zip(prompts, ends)]
    scores = scorer.scores_at(rows, pos)
    seq_len = batch.tokens.shape[1]
    adv = process_token_advantages(
        scores, ends, [s for s, _ in spans], group_size, seq_len, impl=impl
    ).to(device)
    flat = [v for s in scores for v in s]
    metrics = {
        "rm_step_score": sum(flat) / len(flat) if flat else 0.0,
        "steps_per_response": sum(len(e) for e in ends) / max(len(ends), 1),
    }
    if kind == "mixed":
        outcome = group_advantages(batch.rewards.float(), group_size, impl=impl).to(device)
        adv = outcome[:, None] * batch.mask.float() + prm_weight * adv
    return adv, metrics
