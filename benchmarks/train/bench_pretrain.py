"""Tokens/s and MFU per GPU of the pretraining loop (``dsm train pretrain``) on one node.

Usage::

    python benchmarks/train/bench_pretrain.py [--model dsm-1b] [--seq 4096] [--micro-batch 1]
        [--global-batch 8] [--steps 12] [--warmup 4]
    torchrun --nproc_per_node 8 benchmarks/train/bench_pretrain.py --tp 2 ...

It runs the real loop — megatron-core DDP + optimizer, bf16, gradient accumulation, data from a
megatron indexed dataset of random tokens, metrics logging — for ``--steps`` steps without
checkpoints, and reports the mean of the steps after ``--warmup``. FLOPs per token are the
model benchmark's formula (``bench_model.flops_per_token``: 6 N_matmul + 6 L s h), so the MFU
here and there are comparable; the gap is the loop's overhead (optimizer, grad reduction, data).

Without CUDA it prints that it needs a GPU and exits 0. Results (with device and library
versions) are written as JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_model import RESULTS, flops_per_token, peak_tflops  # noqa: E402


def _random_tokens(prefix: Path, vocab: int, n_tokens: int, seed: int = 0) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    doc = 8192
    for _ in range(n_tokens // doc + 1):
        builder.add_item(torch.from_numpy(rng.integers(0, vocab, doc, dtype=np.int64)))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dsm-1b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--recompute", choices=["none", "full"], default="none")
    ap.add_argument("--distributed-optimizer", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_pretrain: needs a CUDA GPU; skipping (no result written)")
        return 0
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")

    import megatron.core

    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import ParallelConfig, destroy_parallel, initialize_parallel
    from dsm_engine.trainers.config import PretrainConfig, load_run_config
    from dsm_engine.trainers.pretrain import run_pretrain

    cfg_model = model_config(args.model, seq_length=args.seq, params_dtype="bfloat16")
    # The same layout the run will ask for, so run_pretrain reuses this context.
    ctx = initialize_parallel(ParallelConfig(tp=args.tp, pp=args.pp), seed=1234)
    rank = ctx.rank
    shared = Path(os.environ.get("BENCH_PRETRAIN_DIR", Path(tempfile.gettempdir()) / "dsm_bench"))
    prefix = shared / f"random_tokens_v{cfg_model.vocab_size}"
    if rank == 0:
        shared.mkdir(parents=True, exist_ok=True)
        _random_tokens(
            prefix, cfg_model.vocab_size, args.steps * args.global_batch * (args.seq + 1)
        )
    torch.distributed.barrier()  # the shard exists before any rank reads it
    cfg, _ = load_run_config(
        PretrainConfig,
        [
            f"run_dir={shared / 'run'}",
            "overwrite=true",
            f"model.preset={args.model}",
            f"model.seq_length={args.seq}",
            "model.params_dtype=bfloat16",
            f"parallel.tp={args.tp}",
            f"parallel.pp={args.pp}",
            "optim.backend=megatron",
            f"optim.distributed_optimizer={str(args.distributed_optimizer).lower()}",
            f"data.paths=[{prefix}]",
            f"train.steps={args.steps}",
            f"train.micro_batch_size={args.micro_batch}",
            f"train.global_batch_size={args.global_batch}",
            f"train.recompute={args.recompute}",
            f"checkpoint.every={args.steps + 1}",  # only the final save, after the timed steps
            "logging.progress=false",
            "schedule.warmup_steps=2",
        ],
    )
    times: list[float] = []
    run_pretrain(cfg, on_step_end=lambda step, m: times.append(m["step_time_s"]))
    world = ctx.world_size
    destroy_parallel()
    if rank != 0:
        return 0

    dt = float(np.mean(times[args.warmup :]))
    tokens = args.global_batch * args.seq
    device_name = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(device_name)
    per_gpu_tflops = flops_per_token(cfg_model, args.seq) * tokens / dt / world / 1e12
    result = {
        "benchmark": "pretrain_loop",
        "model": args.model,
        "params": cfg_model.num_params(),
        "seq_length": args.seq,
        "micro_batch": args.micro_batch,
        "global_batch": args.global_batch,
        "tp": args.tp,
        "pp": args.pp,
        "gpus": world,
        "recompute": args.recompute,
        "distributed_optimizer": args.distributed_optimizer,
        "dtype": "bfloat16",
        "step_time_s": dt,
        "tokens_per_s": tokens / dt,
        "tokens_per_s_per_gpu": tokens / dt / world,
        "achieved_tflops_per_gpu": per_gpu_tflops,
        "peak_tflops": peak,
        "mfu": per_gpu_tflops / peak if peak else None,
        "flop_formula": "6*N_matmul + 6*L*s*h per token (bench_model.flops_per_token)",
        "device": device_name,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "megatron_core": megatron.core.__version__,
            "python": platform.python_version(),
        },
    }
    print(json.dumps(result, indent=2))
    out = args.out or RESULTS / f"bench_pretrain_{args.model}_seq{args.seq}_gpus{world}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
