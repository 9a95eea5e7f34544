"""Benchmark the fused lm_head ops at DeepSeekMath-7B's head (H=4096, V=102,400, bf16).

For N in {4096, 8192, 16384}: median time (do_bench) and peak extra memory, forward and
forward+backward, of ``fused_linear_logprobs`` and ``fused_linear_grpo_loss`` against the
materialised PyTorch reference (the one the tests use), ``torch.compile`` of it, and
Liger-Kernel's fused linear GRPO loss when it is installed. Our ops run in two chunking modes:
``full-vocab`` (token chunks over the whole vocabulary, the default rule at this head, 6NHV for
the GRPO loss with gradients) and ``vocab-chunked`` (``--vocab-chunk`` rows of the lm_head per
chunk, ``--vocab-token-chunk`` tokens: smaller temporaries, the logits recomputed once more),
each with the ``--grad-weight-accum`` modes asked for (``fp32``: an fp32 ``(V, H)`` grad_weight
accumulator, ``V·H·4`` = 1.6 GiB here, rounded once as plain PyTorch; ``param``: accumulated in
bf16, no extra memory; ``auto`` = fp32 at these shapes).
TFLOP/s are counted against the algorithmic FLOPs: 2NHV (forward), 6NHV (forward+backward
without recompute) and 8NHV (with the logits recomputed), next to the measured bf16 matmul
rate at the same shape.

Usage: python benchmarks/kernels/bench_fused_linear.py [--n 4096 8192 16384] [--quick]
       [--modes full-vocab vocab-chunked] [--vocab-chunk 16384] [--vocab-token-chunk 512]
       [--grad-weight-accum fp32 param]
Writes benchmarks/results/fused_linear.{json,md}. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (  # noqa: E402
    environment,
    matmul_tflops,
    median_ms,
    peak_extra_bytes,
    require_cuda,
    write_results,
)

H, V = 4096, 102400
GROUP = 8


def _problem(n: int, t: int = 512):
    from dsm_engine.kernels import fused_linear_logprobs

    b = n // t
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(b, t, H, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(V, H, device="cuda", generator=g) * (3 / H**0.5)).bfloat16()
    targets = torch.randint(0, V, (b, t), device="cuda", generator=g)
    with torch.no_grad():
        logp = fused_linear_logprobs(hidden.view(-1, H), weight, targets.view(-1)).view(b, t)
    old = logp + 0.1 * torch.randn_like(logp)
    ref = logp + 0.1 * torch.randn_like(logp)
    mask = torch.rand(b, t, device="cuda", generator=g) > 0.1
    rewards = torch.randint(0, 2, (b,), device="cuda", generator=g).float()
    return hidden, weight, targets, old, ref, mask, rewards


def _liger_grpo(compiled: bool = True):
    """Liger-Kernel's fused linear GRPO loss as ``f(hidden, weight, targets, old, ref, mask,
    adv) -> loss`` with our objective, or None when liger-kernel is not installed.

    Checked against liger-kernel 0.8.5 (``liger_kernel/chunked_loss/grpo_loss.py``):
    ``LigerFusedLinearGRPOLoss(beta, compiled, use_ref_model, chunk_size, epsilon_low,
    epsilon_high, loss_type, ...)`` then ``forward(_input (B, T, H), lin_weight (V, H),
    selected_token_ids (B, T), attention_mask (B, T), advantages (B,), bias=None,
    ref_per_token_logps=None, old_per_token_logps=None, ...)`` returning ``(loss, metrics)``.
    Its default ``loss_type="dapo"`` divides by the batch's valid-token count; ``"grpo"`` is
    the paper's seq-mean-token-mean (empty rows add 0 and count in B, as ours). Its KL term is
    the same k3 estimator. ``chunk_size`` counts sequences (Liger's default 1 = T tokens per
    chunk). Like ours it computes the input gradient inside forward, even under no_grad, so
    its "fwd" rows include that matmul. ``compiled=False`` keeps torch.compile out (tests).
    """
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except ImportError:
        return None
    loss_mod = LigerFusedLinearGRPOLoss(
        beta=0.04,
        epsilon_low=0.2,
        epsilon_high=0.2,
        loss_type="grpo",
        compiled=compiled,
        use_ref_model=True,
        chunk_size=1,
        temperature=1.0,
    )

    def f(hidden, weight, targets, old, ref, mask, adv):
        loss, _metrics = loss_mod(
            hidden,
            weight,
            targets,
            mask.float(),
            adv.float(),
            ref_per_token_logps=ref,
            old_per_token_logps=old,
        )
        return loss

    return f


def _chunkings(
    modes: list[str], vocab_chunk: int, vocab_token_chunk: int, accums: list[str]
) -> dict[str, dict]:
    """Keyword arguments of our fused ops for each requested (chunking, grad_weight_accum)."""
    table = {
        "full-vocab": {"vocab_chunk": V},  # token chunks from the default budget rule
        "vocab-chunked": {"token_chunk": vocab_token_chunk, "vocab_chunk": vocab_chunk},
    }
    return {f"{m}, gw={a}": {**table[m], "grad_weight_accum": a} for m in modes for a in accums}


def _variants(hidden, weight, targets, old, ref, mask, rewards, chunkings):
    from dsm_engine.kernels import (
        fused_linear_grpo_loss,
        fused_linear_grpo_loss_ref,
        fused_linear_logprobs,
        fused_linear_logprobs_ref,
    )
    from dsm_engine.kernels.advantages import group_advantages

    flat_t = targets.view(-1)
    kw = {"rewards": rewards, "group_size": GROUP}
    compiled_ref = torch.compile(fused_linear_grpo_loss_ref)
    compiled_lp = torch.compile(fused_linear_logprobs_ref)
    out = {}
    for mode, ck in chunkings.items():
        out[("logprobs", f"fused (ours, {mode})")] = lambda h, w, ck=ck: fused_linear_logprobs(
            h.view(-1, H), w, flat_t, **ck
        ).sum()
    out[("logprobs", "materialised torch")] = lambda h, w: fused_linear_logprobs_ref(
        h.view(-1, H), w, flat_t
    ).sum()
    out[("logprobs", "torch.compile")] = lambda h, w: compiled_lp(h.view(-1, H), w, flat_t).sum()
    for mode, ck in chunkings.items():
        out[("grpo", f"fused (ours, {mode})")] = lambda h, w, ck=ck: fused_linear_grpo_loss(
            h, w, targets, old, ref, mask, **kw, **ck
        )[0]
    out[("grpo", "materialised torch")] = lambda h, w: fused_linear_grpo_loss_ref(
        h, w, targets, old, ref, mask, **kw
    )[0]
    out[("grpo", "torch.compile")] = lambda h, w: compiled_ref(h, w, targets, old, ref, mask, **kw)[
        0
    ]
    liger = _liger_grpo()
    if liger is not None:
        adv = group_advantages(rewards, GROUP)
        out[("grpo", "liger-kernel")] = lambda h, w: liger(h, w, targets, old, ref, mask, adv)
    return out


def run(ns: list[int], quick: bool, chunkings: dict[str, dict]) -> None:
    from dsm_engine.kernels import default_chunk_sizes

    env = environment()
    rows, notes = [], []
    for mode, ck in chunkings.items():
        notes.append(f"chunking {mode}: {ck or 'default rule'}")
    for n in ns:
        notes.append(f"N={n}: default (token_chunk, vocab_chunk) = {default_chunk_sizes(n, H, V)}")
        notes.append(
            f"N={n}: gw=fp32 accumulator V*H*4 = {V * H * 4 / 2**20:.0f} MiB = "
            f"{100 * H / n:.0f}% of the fp32 logits N*V*4 (the memory target is < 5%)"
        )
        problem = _problem(n)
        hidden, weight = problem[0], problem[1]
        mm = matmul_tflops(n, H, V)
        notes.append(f"N={n}: measured bf16 matmul ({n}x{H} @ {H}x{V}) {mm:.0f} TFLOP/s")
        flops = {"fwd": 2 * n * H * V, "fwd+bwd": 6 * n * H * V}
        logits_fp32 = n * V * 4
        for (op, name), fn in _variants(*problem, chunkings).items():
            for mode in ("fwd", "fwd+bwd"):
                h = hidden.detach().requires_grad_(mode == "fwd+bwd")
                w = weight.detach().requires_grad_(mode == "fwd+bwd")

                def step(fn=fn, h=h, w=w, mode=mode):
                    if mode == "fwd":
                        with torch.no_grad():
                            return fn(h, w)
                    h.grad = w.grad = None
                    fn(h, w).backward()

                try:
                    step()  # compile / autotune outside the timing
                    ms = median_ms(step, rep=5 if quick else 20)
                    mem = peak_extra_bytes(step)
                except torch.OutOfMemoryError:
                    rows.append({"N": n, "op": op, "impl": name, "mode": mode, "ms": "OOM"})
                    torch.cuda.empty_cache()
                    continue
                tf = flops[mode] / (ms * 1e-3) / 1e12
                row = {"N": n, "op": op, "impl": name, "mode": mode, "ms": round(ms, 3)}
                row["TFLOP/s @2NHV|6NHV"] = round(tf, 1)
                # The same time counted against 8NHV (a backward that recomputes the logits).
                row["TFLOP/s @8NHV"] = round(tf * 8 / 6, 1) if mode == "fwd+bwd" else "-"
                row["% of matmul rate"] = round(100 * tf / mm, 1)
                row["peak extra MiB"] = round(mem / 2**20, 1)
                row["% of fp32 logits"] = round(100 * mem / logits_fp32, 2)
                rows.append(row)
                print(rows[-1], flush=True)
        del problem, hidden, weight
        torch.cuda.empty_cache()
    notes.append(
        "peak extra = peak allocated during the call minus what was allocated before it "
        "(inputs); it includes the gradients of hidden and weight in fwd+bwd."
    )
    write_results("fused_linear", rows, env, notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["full-vocab", "vocab-chunked"],
        default=["full-vocab", "vocab-chunked"],
        help="chunking modes of our fused ops to measure",
    )
    p.add_argument("--vocab-chunk", type=int, default=16384, help="lm_head rows per chunk")
    p.add_argument("--vocab-token-chunk", type=int, default=512, help="tokens per chunk")
    p.add_argument(
        "--grad-weight-accum",
        nargs="+",
        choices=["auto", "fp32", "param"],
        default=["fp32", "param"],
        help="grad_weight accumulation modes of our fused ops to measure (peak memory differs)",
    )
    args = p.parse_args(argv)
    if args.vocab_chunk <= 0 or args.vocab_token_chunk <= 0:
        p.error("--vocab-chunk and --vocab-token-chunk must be positive")
    if not require_cuda("bench_fused_linear"):
        return 0
    chunkings = _chunkings(
        args.modes, args.vocab_chunk, args.vocab_token_chunk, args.grad_weight_accum
    )
    run(args.n, args.quick, chunkings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
