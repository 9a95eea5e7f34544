"""Worker for test_tensor_parallel: run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Every rank builds the same random problem from the seed in argv[1], runs each op unsharded
(TP=1) and on its vocabulary shard (TP=2), and checks forward values and gradients (the
shard's slice for logits/weight; the full gradient for hidden). The fused ops also run with
vocabulary chunks inside the shard. Exits non-zero on mismatch.
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


# Results that cancel large fp32 terms, summed in another order by the shards: entropy is
# lse - Σp·z, two O(|logit|) numbers (|logit| up to ~12, ulp 9.5e-7); the entropy part of the
# logits' gradient is c·p·(z - Σp·z), the same cancellation scaled by c; and the fused
# grad_hidden sums Σ_v dlogits·w over shards and vocabulary chunks. A few ulps of those terms
# exceeded 1e-6 on honest reorderings (seeds 1923966992: entropy 1.9e-6; 39099544: grad_hidden
# 1.3e-6; 6: grad_logits 4.1e-6 against 3.8e-7 unsharded, both measured from float64).
REORDER_ATOL = 8 * ATOL


def _check(name: str, got: torch.Tensor, want: torch.Tensor, atol: float = ATOL) -> None:
    # Absolute tolerance in units of the tensor's largest entry: an element is a sum whose
    # terms are as large as that entry (seed 29: a GRPO grad_hidden entry of 12.7 in a row
    # reaching 800 moved by 2.3e-4, 2 ulps of 800, when the vocabulary was chunked).
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(
        got, want, rtol=RTOL, atol=atol * scale, msg=lambda m: f"{name}: {m}"
    )


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
        _check(f"{impl} entropy", outs["tp2"][1], outs["tp1"][1], REORDER_ATOL)
        _check(f"{impl} grad_logits", outs["tp2"][2], outs["tp1"][2][:, sl], REORDER_ATOL)

        # The fused ops, unsharded over the full vocabulary (the reference) against the shard,
        # with full-vocabulary token chunks (None) and vocabulary chunks inside the shard (64:
        # 150 = 64 + 64 + 22 per shard; 300 = 4 x 64 + 44 unsharded).
        ref_cfg = ("tp1", None)
        configs = (ref_cfg, ("tp2", None), ("tp1", 64), ("tp2", 64))
        for tp, vocab_chunk in configs:
            w = weight if tp == "tp1" else weight[sl]
            hd, wt = hidden.reshape(n, h).clone().requires_grad_(), w.clone().requires_grad_()
            lp, ent = fused_linear_logprobs(
                hd,
                wt,
                flat,
                return_entropy=True,
                token_chunk=5,
                vocab_chunk=vocab_chunk,
                tp_group=group if tp == "tp2" else None,
                impl=impl,
            )
            grads = torch.autograd.grad((lp * g_lp + ent * g_ent).sum(), (hd, wt))
            outs[tp, vocab_chunk] = (lp, ent, *grads)
        for cfg in configs[1:]:
            got, want = outs[cfg], outs[ref_cfg]
            tag = f"{impl} fused {cfg}"
            _check(f"{tag} logprobs", got[0], want[0])
            _check(f"{tag} entropy", got[1], want[1], REORDER_ATOL)
            _check(f"{tag} grad_hidden", got[2], want[2], REORDER_ATOL)
            _check(
                f"{tag} grad_weight",
                got[3],
                want[3][sl] if cfg[0] == "tp2" else want[3],
                REORDER_ATOL,
            )

        # "default": the op's own chunk sizes (for the PyTorch primitives in fp32 on the CPU,
        # the one-pass path, its lse merged across the shards before the gradient).
        grpo_configs = (*configs, ("tp2", "default"))
        for tp, vocab_chunk in grpo_configs:
            w = weight if tp == "tp1" else weight[sl]
            hd, wt = hidden.clone().requires_grad_(), w.clone().requires_grad_()
            chunks = {"token_chunk": 5, "vocab_chunk": vocab_chunk}
            if vocab_chunk == "default":
                chunks = {}
            loss, metrics = fused_linear_grpo_loss(
                hd,
                wt,
                targets,
                old,
                ref,
                mask,
                rewards=rewards,
                group_size=3,
                **chunks,
                tp_group=group if tp == "tp2" else None,
                impl=impl,
            )
            outs[tp, vocab_chunk] = (loss, metrics, *torch.autograd.grad(loss, (hd, wt)))
        for cfg in grpo_configs[1:]:
            got, want = outs[cfg], outs[ref_cfg]
            tag = f"{impl} grpo {cfg}"
            _check(f"{tag} loss", got[0], want[0])
            for k in want[1]:
                _check(f"{tag} metric {k}", got[1][k], want[1][k])
            _check(f"{tag} grad_hidden", got[2], want[2], REORDER_ATOL)
            _check(
                f"{tag} grad_weight",
                got[3],
                want[3][sl] if cfg[0] == "tp2" else want[3],
                REORDER_ATOL,
            )
        print(f"rank {rank}: {impl} TP={world} equals TP=1", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
