"""Learned rewards behind the ``RewardFn`` protocol of ``dsm_engine.rewards``.

``RewardModelScorer`` runs a reward model (TP=1/PP=1, the rollout side) over token rows and
returns probabilities ``sigmoid(score)`` at requested positions. ``ORMReward`` scores a response
by its last token; ``PRMReward`` scores every step end and reduces the steps to one outcome
reward (``min`` by default, the usual PRM aggregate) for the ``RewardFn.score`` interface, and
exposes the per-step scores that process-supervised GRPO needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch

from dsm_engine.reward_models.step_split import DEFAULT_DELIMITER, find_step_ends


class TokenScorer(Protocol):
    """Probabilities at positions of token rows: ``scores_at(rows, positions)[i][j]`` is the
    reward model's ``sigmoid(score)`` at ``positions[i][j]`` of ``rows[i]``."""

    def scores_at(
        self, rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> list[list[float]]: ...


class Codec(Protocol):
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class RewardModelScorer:
    """A whole reward model on one device, scoring in microbatches without gradients."""

    def __init__(self, model: torch.nn.Module, *, micro_batch_size: int = 16, pad_id: int = 0):
        self.model = model
        self.micro_batch_size = micro_batch_size
        self.pad_id = pad_id

    @torch.no_grad()
    def scores_at(
        self, rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        from dsm_engine.reward_models.model import reward_scores

        if len(rows) != len(positions):
            raise ValueError(f"rows ({len(rows)}) and positions ({len(positions)}) differ")
        was = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        out: list[list[float]] = []
        for s in range(0, len(rows), self.micro_batch_size):
            chunk = rows[s : s + self.micro_batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            probs = torch.sigmoid(reward_scores(self.model, ids.to(device))).cpu()
            for i, r in enumerate(chunk):
                pos = list(positions[s + i])
                if any(not 0 <= p < len(r) for p in pos):
                    raise ValueError(f"row {s + i}: positions {pos} outside [0, {len(r)})")
                out.append(probs[i, pos].tolist())
        self.model.train(was)
        return out


def _rows(codec: Codec, prompts: Sequence[str], outputs: Sequence[str]):
    if len(prompts) != len(outputs):
        raise ValueError(f"prompts ({len(prompts)}) and outputs ({len(outputs)}) differ")
    for p, o in zip(prompts, outputs):
        pid = codec.encode(p)
        if codec.bos_id is not None:
            pid = [codec.bos_id, *pid]
        yield pid, codec.encode(o)


class ORMReward:
    """Outcome reward model as a ``RewardFn``: ``sigmoid(score)`` at the last response token."""

    def __init__(self, scorer: TokenScorer, codec: Codec) -> None:
        self.scorer, self.codec = scorer, codec

    def score_tokens(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[float]:
        rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
        return [s[0] for s in self.scorer.scores_at(rows, [[len(r) - 1] for r in rows])]

    def score(
        self, prompts: Sequence[str], outputs: Sequence[str], golds: Sequence[str]
    ) -> list[float]:
        pairs = list(_rows(self.codec, prompts, outputs))
        # An empty response is scored at the prompt's last token: it still gets a reward.
        return self.score_tokens([p for p, _ in pairs], [r for _, r in pairs])


class PRMReward:
    """Process reward model: per-step ``sigmoid(score)`` at step ends; as a ``RewardFn`` the
    steps reduce to one reward (``min``: a solution is as good as its worst step)."""

    def __init__(
        self,
        scorer: TokenScorer,
        codec: Codec,
        *,
        delimiter: str = DEFAULT_DELIMITER,
        reduce: Literal["min", "mean", "last"] = "min",
    ) -> None:
        self.scorer, self.codec, self.delimiter, self.reduce = scorer, codec, delimiter, reduce

    def step_ends(self, response_ids: Sequence[int]) -> list[int]:
        return find_step_ends(list(response_ids), self.codec.decode, self.delimiter)

    def step_scores(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        step_ends: Sequence[Sequence[int]] | None = None,
    ) -> tuple[list[list[float]], list[list[int]]]:
        """Per-step probabilities and the response-relative step ends they sit at."""
        ends = (
            [self.step_ends(r) for r in response_ids]
            if step_ends is None
            else [list(e) for e in step_ends]
        )
        rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
        pos = [[len(p) + e for e in es] for p, es in zip(prompt_ids, ends)]
        return self.scorer.scores_at(rows, pos), ends

    def score(
        self, prompts: Sequence[str], outputs: Sequence[str], golds: Sequence[str]
    ) -> list[float]:
        pairs = list(_rows(self.codec, prompts, outputs))
        steps, _ = self.step_scores([p for p, _ in pairs], [r for _, r in pairs])
        reduce: Callable[[list[float]], float] = {
            "min": min,
            "mean": lambda v: sum(v) / len(v),
            "last": lambda v: v[-1],
        }[self.reduce]
        return [reduce(s) if s else 0.0 for s in steps]


def load_reward_fn(
    kind: Literal["orm", "prm"],
    model_path: str,
    tokenizer: str,
    *,
    delimiter: str = DEFAULT_DELIMITER,
    micro_batch_size: int = 16,
) -> ORMReward | PRMReward:
    """An ORM/PRM ``RewardFn`` from a ``dsm train rm`` checkpoint (built at TP=1, PP=1 on this
    process; initialises a one-process parallel context if none exists)."""
    from dsm_engine.grpo.data import TextCodec
    from dsm_engine.models.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import ParallelConfig, current_context, initialize_parallel
    from dsm_engine.reward_models.model import build_reward_model

    step_dir = resolve_checkpoint(model_path)
    ctx = current_context() or initialize_parallel(ParallelConfig())
    model = build_reward_model(
        model_config(read_meta(step_dir)["model_config"]), ctx, init_weights=False
    )
    load_checkpoint(step_dir, model)
    codec = TextCodec(tokenizer)
    scorer = RewardModelScorer(model.eval(), micro_batch_size=micro_batch_size, pad_id=codec.pad_id)
    if kind == "orm":
        return ORMReward(scorer, codec)
    return PRMReward(scorer, codec, delimiter=delimiter)
