"""The critic's values and one clipped value-loss gradient on a tiny critic at a given
pipeline-parallel size.

Used in-process by test_critic.py (PP=1) and under ``torchrun --nproc_per_node 2`` (PP=2):
``python critic_worker.py IN.pt OUT.pt PP``; every rank writes ``OUT.pt.rank<r>`` with its
stage's gradients under global layer numbers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import TINY  # noqa: E402

MICRO, CLIP = 5, 0.2


def critic_outputs(policy_state: dict, head: dict, batch, pp: int) -> dict:
    """Values, loss, clipped fraction and this stage's gradients (global layer names) of a
    critic initialised from the policy ``policy_state`` (Hugging Face names) with score head
    ``head``, on ``batch``: V_old and the returns are the values plus fixed noise."""
    from dsm_engine.grpo.critic import (
        accumulate_value_grads,
        build_critic,
        init_critic_from_policy,
        token_values,
    )
    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import load_hf_weights

    cfg = model_config(TINY)
    ctx = initialize_parallel(ParallelConfig(pp=pp), seed=1)
    policy = build_model(cfg, ctx, init_weights=False)
    load_hf_weights(policy, policy_state.__getitem__, cfg)
    critic = build_critic(cfg, ctx)
    init_critic_from_policy(critic, policy)
    if ctx.is_last_stage:
        with torch.no_grad():
            critic.score_head.weight.copy_(head["weight"])
            critic.score_head.bias.copy_(head["bias"])
    values = token_values(critic, batch.tokens, micro_batch_size=MICRO)
    g = torch.Generator().manual_seed(7)
    old = values + 0.5 * torch.randn(values.shape, generator=g)
    returns = values + torch.randn(values.shape, generator=g)
    for p in critic.parameters():
        p.grad = None
    loss, metrics = accumulate_value_grads(
        critic, batch, old, returns, clip=CLIP, micro_batch_size=MICRO
    )
    offset = ctx.pp_rank * (cfg.num_layers // pp)

    def global_name(name: str) -> str:
        return re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m[1]) + offset}.", name)

    grads = {global_name(n): p.grad.detach().clone() for n, p in critic.named_parameters()}
    return {"values": values, "loss": loss, "metrics": metrics, "grads": grads}


if __name__ == "__main__":
    import torch.distributed as dist

    from dsm_engine.models.parallel import destroy_parallel

    src, dst, pp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = torch.load(src, weights_only=False)
    out = critic_outputs(data["state"], data["head"], data["batch"], pp)
    torch.save(out, f"{dst}.rank{dist.get_rank()}")
    destroy_parallel()
