"""Benchmark ``logprobs_from_logits`` on materialised bf16 logits (V=102,400).

For N in {4096, 8192, 16384}: median time and peak extra memory, forward and forward+backward
(with and without the in-place backward), against the PyTorch reference (the tests' one) and
``torch.compile`` of it. The op is memory bound, so GB/s (logits bytes read, plus written in
backward) is reported instead of TFLOP/s.

Usage: python benchmarks/kernels/bench_logprobs.py [--n ...] [--quick]
Writes benchmarks/results/logprobs.{json,md}. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, median_ms, peak_extra_bytes, require_cuda, write_results  # noqa: E402

V = 102400


def run(ns: list[int], quick: bool) -> None:
    from dsm_engine.kernels import logprobs_from_logits, logprobs_from_logits_ref

    compiled = torch.compile(logprobs_from_logits_ref)
    variants = {
        "triton (ours)": lambda x, t: logprobs_from_logits(x, t),
        "triton in-place bwd (ours)": lambda x, t: logprobs_from_logits(
            x, t, inplace_backward=True
        ),
        "torch reference": lambda x, t: logprobs_from_logits_ref(x, t),
        "torch.compile": lambda x, t: compiled(x, t),
    }
    rows = []
    for n in ns:
        g = torch.Generator(device="cuda").manual_seed(0)
        logits = (torch.randn(n, V, device="cuda", generator=g) * 3).bfloat16()
        targets = torch.randint(0, V, (n,), device="cuda", generator=g)
        for name, fn in variants.items():
            for mode in ("fwd", "fwd+bwd"):
                if mode == "fwd" and "in-place" in name:
                    continue

                def step(fn=fn, mode=mode, logits=logits, targets=targets):
                    if mode == "fwd":
                        with torch.no_grad():
                            return fn(logits, targets)
                    leaf = logits.detach().requires_grad_()
                    fn(leaf * 1.0, targets).sum().backward()

                try:
                    step()
                    ms = median_ms(step, rep=5 if quick else 20)
                    mem = peak_extra_bytes(step)
                except torch.OutOfMemoryError:
                    rows.append({"N": n, "impl": name, "mode": mode, "ms": "OOM"})
                    torch.cuda.empty_cache()
                    continue
                moved = logits.numel() * logits.element_size() * (1 if mode == "fwd" else 3)
                rows.append(
                    {
                        "N": n,
                        "impl": name,
                        "mode": mode,
                        "ms": round(ms, 3),
                        "GB/s (min traffic)": round(moved / (ms * 1e-3) / 1e9, 1),
                        "peak extra MiB": round(mem / 2**20, 1),
                    }
                )
                print(rows[-1], flush=True)
        del logits
        torch.cuda.empty_cache()
    notes = [
        "fwd+bwd runs on a copy (leaf * 1.0) so the in-place variant may overwrite it; the "
        "copy's allocation is part of every variant's peak."
    ]
    write_results("logprobs", rows, environment(), notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if not require_cuda("bench_logprobs"):
        return 0
    run(args.n, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
