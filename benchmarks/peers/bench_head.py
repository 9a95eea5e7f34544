"""lm_head + log-prob + GRPO loss, forward and backward, against its peers (CPU or GPU).

Every variant computes the same GRPO loss (paper aggregation: sequence mean of token means,
beta 0.04, clip 0.2) from the same ``hidden (B, T, H)``, lm_head ``weight (V, H)``, targets,
old/reference log-probs, mask and per-sequence advantages, then backpropagates it to
``hidden`` and ``weight``:

* ``materialised``: ``logits = hidden @ weight.T`` (input dtype), ``log_softmax`` in fp32,
  ``gather``; our ``grpo_loss`` on top.
* ``torch-chunked``: PyTorch's chunked ``F.linear_cross_entropy(..., reduction="none",
  options=LinearCrossEntropyOptions())`` (torch >= 2.13); its negation is the log-prob;
  ``grpo_loss`` on top.
* ``liger`` / ``liger-compiled``: Liger-Kernel's ``LigerFusedLinearGRPOLoss(loss_type="grpo")``
  (the wrapper of ``benchmarks/kernels/bench_fused_linear.py``, cross-tested against ours).
* ``ours-logprobs gw=M``: ``fused_linear_logprobs``, ``grpo_loss`` on top;
  ``ours-grpo gw=M``: ``fused_linear_grpo_loss``; ``impl="torch"`` on CPU, Triton on CUDA;
  ``M`` each ``grad_weight_accum`` mode (one row in fp32, where the modes coincide).
  ``gw=main_grad`` is the engine's own training path: the weight carries an fp32
  ``main_grad`` (megatron-core's DDP gives every parameter one; it is allocated with the
  inputs, before the baseline) and ``"auto"`` resolves to it there; the weight's gradient goes
  straight into it, so only the hidden gradient counts as a new gradient in that row.

Each variant runs in its own process: every library is imported and the inputs built, one
warm-up step runs (torch.compile, autotuning), then the peak memory of one step is measured
(CPU: peak RSS over the RSS before the step, after ``malloc_trim``; GPU:
``torch.cuda.max_memory_allocated`` over the allocation before it), then the median time of
``--repeats`` steps (GPU: synchronised after each). Peak memory includes the two
gradients; it is reported as a fraction of the fp32 materialised logits ``N·V·4`` bytes, with
and without the gradients. GPU rows give TFLOP/s against 6NHV.

    python -P benchmarks/peers/bench_head.py                      # CPU: the reduced shape set
    python -P benchmarks/peers/bench_head.py --shapes cpu-full    # the issue's 16 CPU shapes
    python -P benchmarks/peers/bench_head.py --device cuda        # DeepSeekMath head, bf16

Writes ``benchmarks/results/head_{cpu,gpu}.{json,md}``. ``--device cuda`` without CUDA says so
and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from common import (  # noqa: E402
    RESULTS,
    median_s,
    peak_extra_bytes,
    peak_rss_bytes,
    require_cuda,
    reset_peak_rss,
    run_child,
    run_info,
    write_results,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GRPO = {"beta": 0.04, "clip_eps_low": 0.2, "clip_eps_high": 0.2}
SEQ_LEN = 256  # T; B = N / T sequences
PACKAGES = ("torch", "liger-kernel", "triton", "dsm-engine")


def _grid(hs, vs, ns, dtypes) -> list[tuple[int, int, int, str]]:
    return [(n, h, v, d) for d in dtypes for h in hs for v in vs for n in ns]


SHAPES = {
    # (N, H, V, dtype)
    "cpu-full": _grid([1024, 4096], [32_000, 102_400], [512, 2048], ["fp32", "bf16"]),
    "cpu-reduced": _grid([1024], [32_000, 102_400], [512, 2048], ["fp32", "bf16"])
    + _grid([4096], [32_000], [512], ["fp32", "bf16"]),
    "gpu": _grid([4096], [102_400], [4096, 8192, 16384], ["bf16"]),
}
GW_MODES = ("auto", "fp32", "param", "main_grad")


def variant_names(dtype: str) -> list[str]:
    """Variants measured at one dtype (in fp32 the modes without ``main_grad`` coincide)."""
    modes = GW_MODES if dtype != "fp32" else ("auto", "main_grad")
    ours = [f"ours-{op} gw={m}" for op in ("logprobs", "grpo") for m in modes]
    return ["materialised", "torch-chunked", "liger", "liger-compiled", *ours]


class Problem:
    """The inputs every variant sees; ``hidden`` and ``weight`` are leaves needing grad."""

    def __init__(self, n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
        t = min(SEQ_LEN, n)
        if n % t:
            raise ValueError(f"N={n} must be a multiple of the sequence length {t}")
        b = n // t
        g = torch.Generator(device).manual_seed(seed)
        self.hidden = torch.randn(b, t, h, generator=g, device=device).to(dtype)
        # Unit-variance logits, as a trained head gives; the old/ref log-probs sit near the
        # policy's (log(1/V) give or take), so the ratio is near 1 and both clip sides occur.
        self.weight = (torch.randn(v, h, generator=g, device=device) / math.sqrt(h)).to(dtype)
        self.hidden.requires_grad_()
        self.weight.requires_grad_()
        self.targets = torch.randint(0, v, (b, t), generator=g, device=device)
        base = -math.log(v) - 0.5
        self.old = base + 0.5 * torch.randn(b, t, generator=g, device=device)
        self.ref = self.old + 0.1 * torch.randn(b, t, generator=g, device=device)
        lengths = torch.randint(t // 2, t + 1, (b,), generator=g, device=device)
        self.mask = torch.arange(t, device=device)[None, :] < lengths[:, None]  # (B, T)
        self.adv = torch.randn(b, generator=g, device=device)  # (B,) per-sequence advantages


def make_variant(name: str, p: Problem, impl: str) -> Callable[[], torch.Tensor]:
    """A zero-argument function computing the variant's loss (a 0-d tensor) on ``p``."""
    import torch.nn.functional as F

    from dsm_engine.kernels import fused_linear_grpo_loss, fused_linear_logprobs, grpo_loss

    b, t, h = p.hidden.shape
    flat_t = p.targets.reshape(-1)

    def on_top(logp: torch.Tensor) -> torch.Tensor:
        return grpo_loss(logp.float().view(b, t), p.old, p.ref, p.mask, advantages=p.adv, **GRPO)[0]

    if name == "materialised":
        return lambda: on_top(
            torch.log_softmax((p.hidden.view(-1, h) @ p.weight.T).float(), dim=-1)
            .gather(1, flat_t[:, None])
            .squeeze(1)
        )
    if name == "torch-chunked":
        from torch.nn import LinearCrossEntropyOptions

        opts = LinearCrossEntropyOptions()
        return lambda: on_top(
            -F.linear_cross_entropy(
                p.hidden.view(-1, h), p.weight, flat_t, reduction="none", options=opts
            )
        )
    if name.startswith("liger"):
        sys.path.insert(0, str(BENCH / "kernels"))
        from bench_fused_linear import _liger_grpo

        liger = _liger_grpo(compiled=name == "liger-compiled")
        if liger is None:
            raise RuntimeError("liger-kernel is not installed (pip install -e .[bench])")
        return lambda: liger(p.hidden, p.weight, p.targets, p.old, p.ref, p.mask, p.adv)
    op, _, gw = name.removeprefix("ours-").partition(" gw=")
    if op == "logprobs":
        return lambda: on_top(
            fused_linear_logprobs(
                p.hidden.view(-1, h), p.weight, flat_t, grad_weight_accum=gw, impl=impl
            )
        )
    if op == "grpo":
        # The trainer passes the gradient its schedule brings (grad_scale), which a main_grad
        # weight needs for its gradient in the forward pass; loss.backward() brings 1.
        scale = {"grad_scale": 1.0} if gw == "main_grad" else {}
        return lambda: fused_linear_grpo_loss(
            p.hidden,
            p.weight,
            p.targets,
            p.old,
            p.ref,
            p.mask,
            advantages=p.adv,
            grad_weight_accum=gw,
            impl=impl,
            **scale,
            **GRPO,
        )[0]
    raise ValueError(f"unknown variant {name!r}")


def measure(spec: dict) -> dict:
    """Time and peak memory of one variant at one shape, in this process."""
    import dsm_engine.kernels  # noqa: F401  every library in before the baseline

    with contextlib.suppress(ImportError):
        import liger_kernel.chunked_loss  # noqa: F401
    device = spec["device"]
    p = Problem(spec["n"], spec["h"], spec["v"], DTYPES[spec["dtype"]], device)
    if spec["variant"].endswith("gw=main_grad"):
        p.weight.main_grad = torch.zeros(p.weight.shape, dtype=torch.float32, device=device)
    loss_fn = make_variant(spec["variant"], p, "triton" if device == "cuda" else "torch")

    def step() -> torch.Tensor:
        p.hidden.grad = p.weight.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    loss = float(step())  # warm-up: compilation and autotuning stay out of both numbers
    p.hidden.grad = p.weight.grad = None
    gc.collect()
    if device == "cuda":
        peak = peak_extra_bytes(step)
        seconds, _ = median_s(lambda: (step(), torch.cuda.synchronize()), spec["repeats"])
        return {"seconds": seconds, "cpu_seconds": None, "peak_bytes": peak, "loss": loss}
    base = reset_peak_rss()
    step()
    peak = peak_rss_bytes() - base
    cpu: list[float] = []

    def timed_step() -> None:
        tic = time.process_time()
        step()
        cpu.append(time.process_time() - tic)

    seconds, _ = median_s(timed_step, spec["repeats"])
    return {
        "seconds": seconds,
        "cpu_seconds": statistics.median(cpu),
        "peak_bytes": peak,
        "loss": loss,
    }


def _row(spec: dict, got: dict, baseline: float | None) -> dict:
    """One table row; ``baseline``: the materialised variant's time (CPU-seconds on CPU)."""
    n, h, v = spec["n"], spec["h"], spec["v"]
    row = {"N": n, "H": h, "V": v, "dtype": spec["dtype"], "variant": spec["variant"]}
    if "error" in got:
        return {**row, "error": got["error"]}
    logits = n * v * 4
    # A main_grad row's weight gradient lands in main_grad, allocated with the inputs.
    new_grads = n * h + (0 if spec["variant"].endswith("gw=main_grad") else v * h)
    grads = new_grads * DTYPES[spec["dtype"]].itemsize
    compared = got["cpu_seconds"] or got["seconds"]
    row["s"] = round(got["seconds"], 4)
    if got["cpu_seconds"] is not None:
        row["cpu s"] = round(got["cpu_seconds"], 3)
    row["x materialised"] = round(compared / baseline, 2) if baseline else "-"
    row["peak extra MiB"] = round(got["peak_bytes"] / 2**20, 1)
    row["% fp32 logits"] = round(100 * got["peak_bytes"] / logits, 1)
    row["% beyond grads"] = round(100 * (got["peak_bytes"] - grads) / logits, 1)
    row["TFLOP/s @6NHV"] = round(6 * n * h * v / got["seconds"] / 1e12, 3)
    row["loss"] = got["loss"]
    return row


def run(args: argparse.Namespace) -> Path:
    shapes = [_parse_shape(s) for s in args.shape] if args.shape else SHAPES[args.shapes]
    name = f"head_{'gpu' if args.device == 'cuda' else 'cpu'}"
    env = run_info(PACKAGES)
    rows: list[dict] = []
    notes = [
        f"shapes {args.shape or args.shapes}; T={SEQ_LEN} tokens per sequence (B = N/T); "
        f"{args.repeats} timed steps per variant after one warm-up, median reported",
        "peak extra = peak memory of one forward+backward step over the memory before it "
        "(inputs in place, every library imported); it includes the gradients of hidden and "
        "weight ((N+V)·H elements); '% beyond grads' subtracts them. Both are % of N·V·4.",
        "Liger runs with its default chunk_size=1 (one sequence per chunk).",
        "mask: each sequence's first L tokens, L uniform in [T/2, T] (~75% of N). ours-grpo "
        "runs only those through the head (it skips masked tokens); every other variant, "
        "ours-logprobs included, runs all N.",
        "s = median wall seconds per step; on CPU 'cpu s' = median CPU-seconds of the process "
        "per step (all its threads), which a loaded shared machine disturbs less, and "
        "'x materialised' compares those.",
        "fp32 rows: the grad_weight_accum modes without main_grad coincide (no fp32 buffer "
        "is needed), one row.",
        "gw=main_grad: the weight carries an fp32 main_grad (megatron's DDP; the engine's "
        "training path), allocated before the baseline; its rows subtract only the hidden "
        "gradient N·H. ours-grpo gw=main_grad passes grad_scale=1.0 (the gradient "
        "loss.backward() brings), as the trainer passes its microbatch share: the weight's "
        "gradient goes into main_grad during the forward (6NHV).",
    ]
    for n, h, v, dtype in shapes:
        baseline = None
        for variant in args.variants or variant_names(dtype):
            spec = {"n": n, "h": h, "v": v, "dtype": dtype, "variant": variant}
            spec.update(device=args.device, repeats=args.repeats)
            got = run_child(Path(__file__), ["--worker", json.dumps(spec)], args.timeout)
            if variant == "materialised" and "error" not in got:
                baseline = got["cpu_seconds"] or got["seconds"]
            rows.append(_row(spec, got, baseline))
            print(json.dumps(rows[-1]), flush=True)
            # after each variant, so a crash or a stop keeps what was measured
            env["load_avg_after"] = run_info()["load_avg_1m_5m_15m"]
            out = write_results(name, rows, env, notes, out_dir=Path(args.out), echo=False)
    print(out.read_text())
    return out


def _parse_shape(text: str) -> tuple[int, int, int, str]:
    try:
        n, h, v, dtype = text.split(",")
        shape = int(n), int(h), int(v), dtype
    except ValueError:
        raise SystemExit(
            f"--shape {text!r}: expected N,H,V,dtype (e.g. 512,1024,32000,bf16)"
        ) from None
    if dtype not in DTYPES:
        raise SystemExit(f"--shape {text!r}: dtype must be one of {sorted(DTYPES)}")
    return shape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shapes", choices=sorted(SHAPES), default=None)
    p.add_argument("--shape", nargs="+", help="explicit N,H,V,dtype shapes (override --shapes)")
    p.add_argument("--variants", nargs="+", help="a subset of the variants (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (CPU 3, GPU 20)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per variant process")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    if args.device == "cuda" and not require_cuda("bench_head"):
        return 0
    args.shapes = args.shapes or ("gpu" if args.device == "cuda" else "cpu-reduced")
    args.repeats = args.repeats or (20 if args.device == "cuda" else 3)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
