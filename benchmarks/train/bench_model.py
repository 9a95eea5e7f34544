"""Forward+backward throughput and MFU of the megatron-core model on one GPU.

Usage: ``python benchmarks/train/bench_model.py [--model dsm-1b] [--seq 4096] [--batch 1]``

FLOPs per training step (forward + backward = 3x forward), per token:

    6 * N_matmul                       dense matmuls (N_matmul = parameters in linear layers
                                       incl. the LM head, excluding the embedding lookup)
  + 6 * L * s * h                      causal attention: QK^T and PV are 2 * 2 * s * h per
                                       token per layer for full attention, halved for causal,
                                       times 3 for forward + backward

MFU = achieved FLOP/s / peak dense bf16 FLOP/s of the device (H100 SXM 989 TFLOP/s,
H200 989, A100 312; override with ``--peak-tflops``).

Without CUDA it prints that it needs a GPU and exits 0. Results (with device and library
versions) are written as JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
RESULTS = Path(__file__).resolve().parents[1] / "results"


def flops_per_token(cfg, seq: int) -> float:
    """Training FLOPs per token (see the module docstring)."""
    h, L = cfg.hidden_size, cfg.num_layers
    matmul_params = cfg.num_params() - cfg.vocab_size * h - (2 * L + 1) * h  # no embedding, norms
    return 6.0 * matmul_params + 6.0 * L * seq * h


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dsm-1b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1, help="micro batch size")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_model: needs a CUDA GPU; skipping (no result written)")
        return 0

    import megatron.core
    import transformers

    from dsm_engine.models import build_model, destroy_parallel, initialize_parallel, model_config
    from dsm_engine.models.build import use_transformer_engine

    ctx = initialize_parallel()
    cfg = model_config(args.model, seq_length=args.seq, params_dtype="bfloat16")
    model = build_model(cfg, ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=ctx.device)
    pos = torch.arange(args.seq, device=ctx.device).unsqueeze(0).expand_as(ids)

    def step() -> None:
        loss = model(ids, pos, None, labels=ids).float().mean()
        loss.backward()
        for p in params:
            p.grad = None

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps

    tokens = args.batch * args.seq
    device_name = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(device_name)
    achieved = flops_per_token(cfg, args.seq) * tokens / dt / 1e12
    result = {
        "benchmark": "model_fwd_bwd",
        "model": args.model,
        "params": cfg.num_params(),
        "seq_length": args.seq,
        "micro_batch": args.batch,
        "dtype": "bfloat16",
        "step_time_s": dt,
        "tokens_per_s": tokens / dt,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "flop_formula": "6*N_matmul*tokens + 6*L*s*h*tokens (causal attention, fwd+bwd)",
        "transformer_engine": use_transformer_engine(),
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "device": device_name,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "megatron_core": megatron.core.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    print(json.dumps(result, indent=2))
    out = args.out or RESULTS / f"bench_model_{args.model}_seq{args.seq}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    destroy_parallel()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
