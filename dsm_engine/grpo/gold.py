"""SFT's data source in the GRPO loop (``algorithm.name: sft``; DeepSeekMath Table 10,
``q, o ~ P_sft(Q, O)``): each prompt answered by its gold solution instead of a sample.

A row is the prompt's token ids (template applied, as the sampler sees them) followed by the
solution tokenised with the same codec and the end token, so the policy learns to stop where a
sampled response would; solutions longer than ``max_new_tokens`` are cut there (and count as
unfinished), like a sampled response. The loss sees the solution tokens only (``mask``). Nothing
is sampled or scored: the sampler log-probs and the rewards are zero.
"""

from __future__ import annotations

from dsm_engine.grpo.batch import build_batch
from dsm_engine.grpo.data import Prompt
from dsm_engine.grpo.sampling import Rollout
from dsm_engine.text_codec import TextCodec


def gold_response(codec: TextCodec, solution: str, max_new_tokens: int) -> tuple[list[int], bool]:
    """Token ids of ``solution`` and the end token, at most ``max_new_tokens`` of them, and
    whether the end token is among them."""
    ids = [*codec.encode(solution), codec.eos_id]
    return ids[:max_new_tokens], len(ids) <= max_new_tokens


def gold_rollout(
    codec: TextCodec, prompts: list[Prompt], *, max_new_tokens: int, multiple_of: int = 1
) -> Rollout:
    """One row per prompt, answered by its gold ``solution`` (a ValueError names a prompt
    without one). Deterministic, so every rank of a model-parallel group builds the same rows
    without a broadcast."""
    responses, finished = [], []
    for p in prompts:
        if p.solution is None:
            raise ValueError(f"prompt {p.text!r} has no gold solution (data.solution_field)")
        ids, done = gold_response(codec, p.solution, max_new_tokens)
        responses.append(ids)
        finished.append(done)
    batch = build_batch(
        [p.token_ids for p in prompts],
        responses,
        [[0.0] * len(r) for r in responses],
        [0.0] * len(prompts),
        finished,
        pad_id=codec.pad_id,
        multiple_of=multiple_of,
    )
    texts = [p.solution or "" for p in prompts]
    return Rollout(batch, texts, [True] * len(prompts), rollout_s=0.0, reward_s=0.0)
