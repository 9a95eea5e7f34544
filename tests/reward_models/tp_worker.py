"""Worker of test_reward_model_tp.py (``torchrun --nproc_per_node 2``): a reward model's
scores, PRM loss and full gradients at TP=2 (with and without sequence parallelism) and at
TP=1 (dp=2) from the same weights (a TP=2 checkpoint resharded). Rank 0 writes the largest
differences to ``--out`` as JSON; the test asserts on them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

B, S = 3, 16


def batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 256, (B, S), generator=g)
    pos = torch.tensor([[3, 9, 15], [5, 0, 0], [2, 4, 11]])
    lab = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0, 0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    return ids, pos, lab, mask


def measure(model):
    from megatron.core import parallel_state as ps

    from dsm_engine.models.convert import gather_canonical
    from dsm_engine.reward_models.losses import prm_loss
    from dsm_engine.reward_models.model import reward_scores
    from dsm_engine.trainers.optim import allreduce_sequence_parallel_grads

    ids, pos, lab, mask = batch()
    model.zero_grad(set_to_none=True)
    scores = reward_scores(model, ids)
    loss_sum, count = prm_loss(scores, pos, lab, mask)
    (loss_sum / count).backward()
    # the gradients the optimizer steps with: under sequence parallelism each TP rank saw only
    # its tokens, and the optimizer sums the norm weights' partial gradients over TP first
    allreduce_sequence_parallel_grads(
        list(model.parameters()), ps.get_tensor_model_parallel_group()
    )
    grads = gather_canonical(model, grads=True)
    return scores.detach(), float((loss_sum / count).detach()), grads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    args = ap.parse_args()

    import torch.distributed as dist

    from dsm_engine.models import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
        model_config,
    )
    from dsm_engine.models.checkpoint import load_checkpoint, save_checkpoint
    from dsm_engine.reward_models.model import build_reward_model

    cfg = model_config("tiny", seq_length=S)
    results = {}
    ctx = initialize_parallel(ParallelConfig(tp=2), seed=3)
    model = build_reward_model(cfg, ctx)
    with torch.no_grad():
        model.score_head.weight.copy_(torch.linspace(-1, 1, cfg.hidden_size)[None])
        model.score_head.bias.fill_(0.2)
    s2, l2, g2 = measure(model)
    save_checkpoint(args.ckpt, 1, model)
    destroy_parallel(keep_process_group=True)

    ctx = initialize_parallel(ParallelConfig(tp=2, sequence_parallel=True), seed=3)
    model = build_reward_model(cfg, ctx, init_weights=False)
    load_checkpoint(args.ckpt, model)
    ssp, lsp, gsp = measure(model)
    destroy_parallel(keep_process_group=True)

    ctx = initialize_parallel(ParallelConfig(tp=1), seed=99)
    model = build_reward_model(cfg, ctx, init_weights=False)
    load_checkpoint(args.ckpt, model)
    s1, l1, g1 = measure(model)

    def gdiff(a, b):
        assert set(a) == set(b), sorted(set(a) ^ set(b))
        diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
        return max(diffs.values()), max(diffs, key=diffs.get)

    (g_tp2, worst_tp2), (g_sp, worst_sp) = gdiff(g2, g1), gdiff(gsp, g1)
    results = {
        "worst_tp2": worst_tp2,
        "worst_sp": worst_sp,
        "score_diff_tp2": float((s2 - s1).abs().max()),
        "loss_diff_tp2": abs(l2 - l1),
        "grad_diff_tp2": g_tp2,
        "score_diff_sp": float((ssp - s1).abs().max()),
        "loss_diff_sp": abs(lsp - l1),
        "grad_diff_sp": g_sp,
        "head_grad_norm": float(g1["score_head.weight"].norm()),
        "num_tensors": len(g1),
    }
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results))
    destroy_parallel()


if __name__ == "__main__":
    main()
