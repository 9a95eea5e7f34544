"""Learned rewards behind the ``RewardFn`` protocol of ``dsm_engine.rewards``.

``RewardModelScorer`` runs a reward model (this rank's TP shard / pipeline stage) over token
rows and returns probabilities ``sigmoid(score)`` at requested positions; at pp > 1 it runs
megatron-core's forward-only pipeline schedule and broadcasts the last stage's scores. ``ORMReward`` scores a response
by its last token; ``PRMReward`` scores every step end and reduces the steps to one outcome
reward (``min`` by default, the usual PRM aggregate) for the ``RewardFn.score`` interface, and
exposes the per-step scores that process-supervised GRPO needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from dsm_engine.reward_models.step_split import DEFAULT_DELIMITER, find_step_ends

if TYPE_CHECKING:
    from dsm_engine.models.parallel import ParallelContext


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
    """A reward model (this rank's TP shard and pipeline stage) scoring token rows in
    microbatches, without gradients.

    Collective contract: when the model is split over tensor- or pipeline-parallel ranks,
    every rank of its model-parallel group must call :meth:`scores_at` at the same time with
    the same ``rows`` and ``positions`` (the GRPO trainer satisfies this: rollouts are
    broadcast over the TP x PP group in ``grpo.sampling``). Every rank returns the same list.
    """

    def __init__(self, model: torch.nn.Module, *, micro_batch_size: int = 16, pad_id: int = 0):
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.model = model
        self.micro_batch_size = micro_batch_size
        self.pad_id = pad_id

    def _microbatches(self, rows: Sequence[Sequence[int]]) -> list[tuple[slice, torch.Tensor]]:
        """(row slice, right-padded ids [b, w] int64) per microbatch; ``w`` is the longest row
        of the microbatch, rounded up to a multiple of the TP size under sequence parallelism
        (the sequence is split over TP ranks)."""
        from dsm_engine.models.build import _unwrap

        config = _unwrap(self.model).config
        multiple = config.tensor_model_parallel_size if config.sequence_parallel else 1
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(rows), self.micro_batch_size):
            sl = slice(s, min(s + self.micro_batch_size, len(rows)))
            chunk = rows[sl]
            width = max(1, *(len(r) for r in chunk))
            width = -(-width // multiple) * multiple
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            out.append((sl, ids.to(device)))
        return out

    @torch.no_grad()
    def scores_at(
        self, rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """``sigmoid(score)`` at ``positions[i]`` of ``rows[i]`` (fp32 math, Python floats).

        Rows may differ in length (right-padded per microbatch; causal attention keeps the
        padding out of every real position). Collective over the model-parallel group (see
        the class docstring); positions are checked before any communication, so bad input
        fails on every rank alike.
        """
        from dsm_engine.models.build import _unwrap

        if len(rows) != len(positions):
            raise ValueError(f"rows ({len(rows)}) and positions ({len(positions)}) differ")
        pos = [list(p) for p in positions]
        for i, (r, p) in enumerate(zip(rows, pos)):
            if any(not 0 <= j < len(r) for j in p):
                raise ValueError(f"row {i}: positions {p} outside [0, {len(r)})")
        if not any(pos):  # nothing to score (every rank sees this alike: no collective)
            return [[] for _ in pos]
        was = self.model.training
        self.model.eval()
        try:
            m = _unwrap(self.model)
            if m.pre_process and m.post_process:
                flat = self._score_one_stage(pos, self._microbatches(rows))
            else:
                flat = self._score_pipeline(pos, self._microbatches(rows))
        finally:
            self.model.train(was)
        values = flat.tolist()
        out, k = [], 0
        for p in pos:
            out.append(values[k : k + len(p)])
            k += len(p)
        return out

    def _score_one_stage(self, pos: list[list[int]], mbs) -> torch.Tensor:
        from dsm_engine.reward_models.model import reward_scores

        picked = [_pick(torch.sigmoid(reward_scores(self.model, ids)), pos[sl]) for sl, ids in mbs]
        return torch.cat(picked).cpu()

    def _score_pipeline(self, pos: list[list[int]], mbs) -> torch.Tensor:
        """Microbatches through megatron-core's forward-only schedule; the last stage's picked
        probabilities are broadcast over the pipeline group (every stage returns them)."""
        import torch.distributed as dist
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from dsm_engine.models.build import _unwrap

        def forward_step(data_iterator, chunk: torch.nn.Module):
            sl, ids = next(data_iterator)
            positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
            out = chunk(ids, positions.expand_as(ids), None)  # scores [b, w] on the last stage

            def loss_func(scores: torch.Tensor):
                return scores.new_zeros(()), {"probs": _pick(torch.sigmoid(scores), pos[sl])}

            return out, loss_func

        config = _unwrap(self.model).config
        # Microbatches differ in width and (the last) in rows: stage boundaries exchange
        # shapes first. The schedule's grad finalization has no place in scoring.
        saved = (config.variable_seq_lengths, config.finalize_model_grads_func)
        config.variable_seq_lengths, config.finalize_model_grads_func = True, None
        try:
            infos = get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(mbs),
                model=[self.model],
                num_microbatches=len(mbs),
                seq_length=max(ids.shape[1] for _, ids in mbs),
                micro_batch_size=self.micro_batch_size,
                forward_only=True,
            )
        finally:
            config.variable_seq_lengths, config.finalize_model_grads_func = saved
        device = mbs[0][1].device
        if ps.is_pipeline_last_stage():
            flat = torch.cat([i["probs"] for i in infos]).float().contiguous()
        else:
            flat = torch.empty(sum(len(p) for p in pos), dtype=torch.float32, device=device)
        group = ps.get_pipeline_model_parallel_group()
        dist.broadcast(flat, src=dist.get_process_group_ranks(group)[-1], group=group)
        return flat.cpu()


class MeanScorer:
    """An ensemble of reward models: the mean of its members' probabilities.

    A policy optimised against one learned reward finds that model's idiosyncratic errors
    (over-optimisation); members trained with different seeds rarely share them, so the mean
    blunts each one's errors while keeping what they agree on."""

    def __init__(self, members: Sequence[TokenScorer]) -> None:
        if not members:
            raise ValueError("MeanScorer needs at least one member")
        self.members = list(members)

    def scores_at(
        self, rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        per_member = [m.scores_at(rows, positions) for m in self.members]
        n = len(self.members)
        return [[sum(v) / n for v in zip(*row)] for row in zip(*per_member)]


def _pick(probs: torch.Tensor, pos: Sequence[Sequence[int]]) -> torch.Tensor:
    """Flat fp32 ``probs[i, pos[i][j]]`` in row-major order (probs [b, w])."""
    rows = [i for i, p in enumerate(pos) for _ in p]
    cols = [j for p in pos for j in p]
    idx = torch.tensor(rows, dtype=torch.long, device=probs.device)
    jdx = torch.tensor(cols, dtype=torch.long, device=probs.device)
    return probs[idx, jdx].float()


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
    ctx: ParallelContext | None = None,
    delimiter: str = DEFAULT_DELIMITER,
    micro_batch_size: int = 16,
) -> ORMReward | PRMReward:
    """An ORM/PRM ``RewardFn`` from a ``dsm train rm`` checkpoint, built in the parallel layout
    of ``ctx`` (this rank's TP shard / pipeline stage). ``ctx`` defaults to the context already
    set up (a training session's); with none, ``RuntimeError`` says to open
    ``parallel_session()``: scoring never sets up distributed state. At TP/PP > 1 scoring is
    collective over the model-parallel group (see ``RewardModelScorer``)."""
    from dsm_engine.models.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import require_context
    from dsm_engine.reward_models.model import build_reward_model
    from dsm_engine.text_codec import TextCodec

    ctx = require_context(ctx, "load_reward_fn")
    step_dir = resolve_checkpoint(model_path)
    model = build_reward_model(
        model_config(read_meta(step_dir)["model_config"]), ctx, init_weights=False
    )
    load_checkpoint(step_dir, model)
    codec = TextCodec(tokenizer)
    scorer = RewardModelScorer(model.eval(), micro_batch_size=micro_batch_size, pad_id=codec.pad_id)
    if kind == "orm":
        return ORMReward(scorer, codec)
    return PRMReward(scorer, codec, delimiter=delimiter)
