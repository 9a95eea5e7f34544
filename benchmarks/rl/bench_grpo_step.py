"""GRPO step on one GPU for a ~1B config (``dsm-1b``, bf16): time split and tokens/s, and the
update with the fused lm_head GRPO loss versus materialised logits (time and peak memory).

One step = rollout (hf backend, ``--prompts`` x ``--group`` samples of ``--new-tokens``),
reference log-probs, old-policy log-probs, one update (mu = 1), weight sync to the sampler.
Prompts are random token ids (the timing does not depend on the text).

Usage: python benchmarks/rl/bench_grpo_step.py [--prompts 4 --group 8 --new-tokens 256]
Writes benchmarks/results/grpo_step.{json,md}. Without CUDA it says so and exits 0.
"""

# ruff: noqa: B023  (the lambdas are timed at once, inside their loop iteration)

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, peak_extra_bytes, require_cuda, write_results  # noqa: E402


def _timed(fn):
    torch.cuda.synchronize()
    tic = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - tic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    args = p.parse_args()
    if not require_cuda("bench_grpo_step"):
        return 0

    from dsm_engine.grpo.batch import build_batch
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.sampling import sync_weights
    from dsm_engine.grpo.step import grpo_updates, sequence_logprobs
    from dsm_engine.kernels import (
        fused_linear_grpo_loss,
        group_advantages,
        grpo_loss,
        logprobs_from_logits,
    )
    from dsm_engine.models import build_model, initialize_parallel, model_config
    from dsm_engine.models.build import forward_hidden, lm_head_weight
    from dsm_engine.models.convert import hf_config
    from dsm_engine.rollout.base import SamplingParams
    from dsm_engine.rollout.hf import HFRolloutEngine
    from dsm_engine.trainers.optim import OptimConfig, wrap_and_build_optimizer

    cfg = model_config("dsm-1b", seq_length=args.prompt_tokens + args.new_tokens)
    ctx = initialize_parallel()
    policy = build_model(cfg, ctx)
    reference = build_model(cfg, ctx).requires_grad_(False)
    chunks, opt, zero_grad = wrap_and_build_optimizer(
        [policy], OptimConfig(backend="megatron"), bf16=True
    )
    policy = chunks[0]
    for group in opt.param_groups:
        group["lr"] = 1e-6
    engine = HFRolloutEngine(hf_config(cfg), dtype=torch.bfloat16, max_batch_rows=256)
    sync_weights(policy, engine, cfg)
    algo = GRPOAlgoConfig(group_size=args.group, micro_batch_size=args.micro_batch)
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(100, cfg.vocab_size, (args.prompt_tokens,), generator=g).tolist()
        for _ in range(args.prompts)
    ]
    params = SamplingParams(max_new_tokens=args.new_tokens, stop_token_ids=[], seed=0)

    def finalize():
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads(chunks)

    rows = []
    for rep in range(2):  # the first repetition warms up
        out, t_roll = _timed(lambda: engine.generate(prompts, args.group, params))
        rewards = torch.randint(0, 2, (len(out),), generator=g).float().tolist()
        batch = build_batch(
            [prompts[i] for i in out.prompt_index],
            out.token_ids,
            out.logprobs,
            rewards,
            out.finished,
            pad_id=0,
            multiple_of=16,
        ).to(ctx.device)
        kw = dict(temperature=1.0, micro_batch_size=args.micro_batch)
        (ref, _), t_ref = _timed(
            lambda: sequence_logprobs(reference, batch.tokens, batch.targets, **kw)
        )
        (old, _), t_old = _timed(
            lambda: sequence_logprobs(policy, batch.tokens, batch.targets, **kw)
        )
        adv = group_advantages(batch.rewards.to(ctx.device).float(), args.group)
        _, t_upd = _timed(
            lambda: grpo_updates(
                policy,
                opt,
                zero_grad,
                batch,
                old,
                ref,
                adv,
                algo,
                temperature=1.0,
                finalize_grads=finalize,
            )
        )
        _, t_sync = _timed(lambda: sync_weights(policy, engine, cfg))
        total = t_roll + t_ref + t_old + t_upd + t_sync
        tokens = float(batch.mask.sum()) + args.prompt_tokens * len(out)
        if rep:
            rows.append(
                {
                    "what": "step",
                    "rollout_s": t_roll,
                    "reference_s": t_ref,
                    "old_s": t_old,
                    "update_s": t_upd,
                    "sync_s": t_sync,
                    "total_s": total,
                    "tokens_per_s": tokens / total,
                    "rollout_tokens_per_s": float(batch.mask.sum()) / t_roll,
                }
            )

    mb = batch.rows(slice(0, args.micro_batch))
    w = lm_head_weight(policy)

    def fused():
        h = forward_hidden(policy, mb.tokens).transpose(0, 1)
        loss, _ = fused_linear_grpo_loss(
            h,
            w,
            mb.targets,
            old[: args.micro_batch],
            ref[: args.micro_batch],
            mb.mask,
            advantages=adv[: args.micro_batch],
        )
        loss.backward()

    def materialised():
        h = forward_hidden(policy, mb.tokens).transpose(0, 1)
        logits = (h @ w.T).float()
        logp = logprobs_from_logits(logits.reshape(-1, logits.shape[-1]), mb.targets.reshape(-1))
        loss, _ = grpo_loss(
            logp.view(mb.targets.shape),
            old[: args.micro_batch],
            ref[: args.micro_batch],
            mb.mask,
            advantages=adv[: args.micro_batch],
        )
        loss.backward()

    for name, fn in (("fused", fused), ("materialised", materialised)):
        fn()
        _, secs = _timed(fn)
        peak = peak_extra_bytes(fn)
        rows.append(
            {
                "what": f"update microbatch ({name} loss)",
                "update_s": secs,
                "peak_extra_gib": peak / 2**30,
                "tokens": args.micro_batch * mb.tokens.shape[1],
            }
        )
        zero_grad()
    notes = [
        f"dsm-1b ({cfg.num_params() / 1e9:.2f}B params), bf16, megatron optimizer; "
        f"{args.prompts} prompts x {args.group} samples, {args.prompt_tokens} prompt + "
        f"{args.new_tokens} new tokens; rollout backend hf (transformers generate)"
    ]
    path = write_results("grpo_step", rows, environment(), notes)
    print(path.read_text().replace(str(path.parent), ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
