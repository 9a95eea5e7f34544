"""Worker for test_tensor_parallel: run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Every rank builds the same random problem from the seed in argv[1], runs each op unsharded
(TP=1) and on its vocabulary shard (TP=2), and checks forward values and gradients (the
shard's slice for logits/weight; the full gradient for hidden). Exits non-zero on mismatch.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from dsm_engine.kernels import (
    fused_linear_grpo_loss,
    fused_linear_logprobs,
    logprobs_from_logits,
)

RTOL, ATOL = 1e-5, 1e-6


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    gen = torch.Generator().manual_seed(int(sys.argv[1]))
    b, t, h, v = 3, 4, 16, 2 * 150
    vl = v // world
    sl = slice(rank * vl, (rank + 1) * vl)
    n = b * t
    hidden = torch.randn(b, t, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * 0.5
    logits = torch.randn(n, v, generator=gen) * 3
    targets = torch.randint(0, v, (b, t), generator=gen)
    targets[0, :2] = torch.tensor([0, v - 1])  # first and last ids: owned by different ranks
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    old = torch.randn(b, t, generator=gen) * 0.3 - 5
    ref = torch.randn(b, t, generator=gen) * 0.3 - 5
    mask = torch.rand(b, t, generator=gen) > 0.2
    rewards = torch.tensor([1.0, 0.0, 1.0])
    flat = targets.view(-1)

    for impl in ("triton", "torch"):
        # logprobs_from_logits
        outs = {}
        for tp, x in (("tp1", logits.clone()), ("tp2", logits[:, sl].clone())):
            x.requires_grad_()
            lp, ent = logprobs_from_logits(
                x,
                flat,
                temperature=0.9,
                return_entropy=True,
                tp_group=group if tp == "tp2" else None,
                impl=impl,
            )
            (gx,) = torch.autograd.grad((lp * g_lp + ent * g_ent).sum(), x)
            outs[tp] = (lp, ent, gx)
        _check(f"{impl} logprobs", outs["tp2"][0], outs["tp1"][0])
        _check(f"{impl} entropy", outs["tp2"][1], outs["tp1"][1])
        _check(f"{impl} grad_logits", outs["tp2"][2], outs["tp1"][2][:, sl])

        # fused_linear_logprobs
        for tp, w in (("tp1", weight), ("tp2", weight[sl])):
            hd, wt = hidden.reshape(n, h).clone().requires_grad_(), w.clone().requires_grad_()
            lp, ent = fused_linear_logprobs(
                hd,
                wt,
                flat,
                return_entropy=True,
                chunk_size=5,
                tp_group=group if tp == "tp2" else None,
                impl=impl,
            )
            outs[tp] = (lp, ent, *torch.autograd.grad((lp * g_lp + ent * g_ent).sum(), (hd, wt)))
        _check(f"{impl} fused logprobs", outs["tp2"][0], outs["tp1"][0])
        _check(f"{impl} fused entropy", outs["tp2"][1], outs["tp1"][1])
        _check(f"{impl} fused grad_hidden", outs["tp2"][2], outs["tp1"][2])
        _check(f"{impl} fused grad_weight", outs["tp2"][3], outs["tp1"][3][sl])

        # fused_linear_grpo_loss
        for tp, w in (("tp1", weight), ("tp2", weight[sl])):
            hd, wt = hidden.clone().requires_grad_(), w.clone().requires_grad_()
            loss, metrics = fused_linear_grpo_loss(
                hd,
                wt,
                targets,
                old,
                ref,
                mask,
                rewards=rewards,
                group_size=3,
                chunk_size=5,
                tp_group=group if tp == "tp2" else None,
                impl=impl,
            )
            outs[tp] = (loss, metrics, *torch.autograd.grad(loss, (hd, wt)))
        _check(f"{impl} grpo loss", outs["tp2"][0], outs["tp1"][0])
        for k in outs["tp1"][1]:
            _check(f"{impl} grpo metric {k}", outs["tp2"][1][k], outs["tp1"][1][k])
        _check(f"{impl} grpo grad_hidden", outs["tp2"][2], outs["tp1"][2])
        _check(f"{impl} grpo grad_weight", outs["tp2"][3], outs["tp1"][3][sl])
        print(f"rank {rank}: {impl} TP={world} equals TP=1", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
