"""One GRPO loss/gradient evaluation on a tiny policy, at a given tensor-parallel size.

Used in-process by test_step.py (TP=1) and under ``torchrun --nproc_per_node 2`` (TP=2):
``python step_worker.py IN.pt OUT.pt TP``; rank 0 writes the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import TINY, grads_as_hf  # noqa: E402

GROUP, BETA, EPS, TEMP = 4, 0.04, 0.2, 0.7


def initial_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Hugging Face Llama state dict of the TINY architecture."""
    from transformers import LlamaForCausalLM

    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(hf_config(model_config(TINY))).state_dict()


def grpo_step_outputs(hf_state, batch, tp: int, micro_batch_size: int = 5) -> dict:
    """Log-probs, advantages, loss, metrics and HF-named gradients of one GRPO step."""
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.step import accumulate_grads, advantages_of, sequence_logprobs
    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import load_hf_weights

    cfg = model_config(TINY)
    ctx = initialize_parallel(ParallelConfig(tp=tp), seed=1)
    model = build_model(cfg, ctx, init_weights=False)
    load_hf_weights(model, hf_state.__getitem__, cfg)
    group = ctx.tp_group if tp > 1 else None
    logp, ent = sequence_logprobs(
        model,
        batch.tokens,
        batch.targets,
        temperature=TEMP,
        tp_group=group,
        micro_batch_size=micro_batch_size,
        return_entropy=True,
    )
    g = torch.Generator().manual_seed(7)
    old = logp + 0.3 * torch.randn(logp.shape, generator=g)  # ratios beyond both clip edges
    ref = logp + 0.5 * torch.randn(logp.shape, generator=g)
    adv = advantages_of(batch.rewards, GROUP)
    algo = GRPOAlgoConfig(
        group_size=GROUP,
        micro_batch_size=micro_batch_size,
        beta=BETA,
        clip_eps_low=EPS,
        clip_eps_high=EPS,
    )
    for p in model.parameters():
        p.grad = None
    loss, metrics = accumulate_grads(
        model, batch, old, ref, adv, algo, temperature=TEMP, tp_group=group
    )
    return {
        "logp": logp,
        "entropy": ent,
        "old": old,
        "ref": ref,
        "adv": adv,
        "loss": loss,
        "metrics": metrics,
        "grads": grads_as_hf(model, cfg),
    }


if __name__ == "__main__":
    import torch.distributed as dist

    from dsm_engine.models.parallel import destroy_parallel

    src, dst, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = torch.load(src, weights_only=False)
    out = grpo_step_outputs(data["state"], data["batch"], tp)
    if dist.get_rank() == 0:
        torch.save(out, dst)
    destroy_parallel()
