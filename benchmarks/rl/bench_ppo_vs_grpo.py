"""A PPO step against a GRPO step at the same batch and model: seconds (split by phase) and peak
memory, with where it goes (policy, reference and critic parameters, optimizer states,
gradients, and the rest: activations and temporaries).

DeepSeekMath §4.1: GRPO drops PPO's value model (a critic of the policy's size, trained with
its own optimizer) and uses the group's mean reward as the baseline. Both steps here start
from the same rollout batch (random token ids, synthetic 0/1 rewards; no sampling, the
rollout's cost is the same for both) on a one-rank parallel state:

* grpo: reference and old-policy log-probs, group advantages (coefficient ``grpo``), one
  policy update (``grpo_updates``: forward/backward and optimizer step).
* ppo: the same log-prob passes, the critic's token values, GAE advantages (coefficient
  ``ppo``), the policy update, then the critic's clipped value loss backward and its
  optimizer step. The critic is ``build_critic`` initialised from the policy, stepped by the
  same optimizer builder as the policy (``wrap_and_build_optimizer``).

Each variant runs in its own process so its peak is its own. On the CPU (fp32, the ``torch``
optimizer) the peak is the peak RSS over the RSS after imports; on CUDA (``--device cuda``:
bf16 parameters, megatron-core's optimizer with fp32 master weights) it is
``torch.cuda.max_memory_allocated`` over what was allocated before the models were built.
Static parts are measured on the objects after the last step (distinct storages counted once):
parameter bytes per model, optimizer-state bytes (Adam moments and fp32 master copies), and
gradient bytes (``.grad`` and megatron's ``main_grad`` buffers). ``rest`` = peak - static.

    python -P benchmarks/rl/bench_ppo_vs_grpo.py [--device cpu|cuda] [--repeats N] [--smoke]

The CPU run uses a ~7M-parameter Llama (``Spec``'s defaults) and 32 rows of up to 128 tokens;
``--device cuda`` uses the ~1.2B ``dsm-1b`` architecture and 64 rows of up to 512 tokens
(``gpu_spec``); ``--smoke`` a toy size on either.

Writes ``benchmarks/results/ppo_vs_grpo{,_cuda}.{json,md}``; ``--device cuda`` without a GPU
says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from common import (  # noqa: E402
    RESULTS,
    peak_rss_bytes,
    require_cuda,
    reset_peak_rss,
    run_child,
    run_info,
    write_results,
)

VARIANTS = ("grpo", "ppo")
PHASES = ("logprobs", "values", "advantages", "policy_update", "critic_update")
STATIC = ("policy", "reference", "critic", "optimizer_states", "gradients")


@dataclass
class Spec:
    """The model (``ModelConfig`` fields) and the batch: ``prompts`` x ``group`` rows of
    ``prompt_tokens`` + up to ``response_tokens`` (lengths vary, at least half)."""

    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "num_layers": 4,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "ffn_hidden_size": 704,
            "vocab_size": 8192,
        }
    )
    prompts: int = 4
    group: int = 8
    prompt_tokens: int = 32
    response_tokens: int = 96
    micro_batch: int = 8
    repeats: int = 2
    device: str = "cpu"
    seed: int = 0


@dataclass
class Parts:
    """What one variant's steps use; critic fields are None for GRPO."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    optimizer: Any
    zero_grad: Any
    finalize: Any
    batch: Any
    critic: torch.nn.Module | None = None
    critic_optimizer: Any = None
    critic_zero_grad: Any = None
    critic_finalize: Any = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(spec: Spec, vocab: int):
    """A fixed random rollout batch: random prompts (one per group), responses and 0/1
    rewards, with both rewards present in every group (GRPO's advantages are not all 0)."""
    from dsm_engine.grpo.batch import build_batch

    g = torch.Generator().manual_seed(spec.seed)
    prompts, responses, logps, rewards = [], [], [], []
    for _ in range(spec.prompts):
        prompt = torch.randint(3, vocab, (spec.prompt_tokens,), generator=g).tolist()
        for j in range(spec.group):
            n = int(
                torch.randint(
                    spec.response_tokens // 2, spec.response_tokens + 1, (1,), generator=g
                )
            )
            prompts.append(prompt)
            responses.append(torch.randint(3, vocab, (n,), generator=g).tolist())
            logps.append([0.0] * n)
            rewards.append(float(j % 2) if j < 2 else float(torch.randint(0, 2, (1,), generator=g)))
    return build_batch(
        prompts, responses, logps, rewards, [True] * len(prompts), pad_id=0, multiple_of=16
    )


def build_parts(spec: Spec, variant: str) -> Parts:
    """Policy, frozen reference, optimizer (and for ``ppo`` the critic and its optimizer) on a
    one-rank parallel state, and the batch on the device."""
    from dsm_engine.grpo.critic import build_critic, init_critic_from_policy
    from dsm_engine.models import build_model, initialize_parallel, model_config
    from dsm_engine.trainers.optim import OptimConfig, wrap_and_build_optimizer

    cuda = spec.device == "cuda"
    seq = spec.prompt_tokens + spec.response_tokens + 16
    dtype = "bfloat16" if cuda else "float32"
    cfg = model_config("tiny", **spec.model, seq_length=seq, params_dtype=dtype)
    ctx = initialize_parallel(seed=spec.seed)
    optim = OptimConfig(backend="megatron" if cuda else "torch")

    def with_optimizer(model):
        chunks, opt, zero_grad = wrap_and_build_optimizer([model], optim, bf16=cuda)
        for group in opt.param_groups:
            group["lr"] = 1e-6
        finalize = None
        if cuda:
            from megatron.core.distributed import finalize_model_grads

            def finalize():
                finalize_model_grads(chunks)

        return chunks[0], opt, zero_grad, finalize

    policy = build_model(cfg, ctx)
    reference = build_model(cfg, ctx).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    critic = None
    if variant == "ppo":
        critic = build_critic(cfg, ctx)
        init_critic_from_policy(critic, policy)
    policy, opt, zero_grad, finalize = with_optimizer(policy)
    parts = Parts(
        policy, reference, opt, zero_grad, finalize, synthetic_batch(spec, cfg.vocab_size)
    )
    parts.batch = parts.batch.to(ctx.device)
    if critic is not None:
        (
            parts.critic,
            parts.critic_optimizer,
            parts.critic_zero_grad,
            parts.critic_finalize,
        ) = with_optimizer(critic)
    return parts


def step(parts: Parts, spec: Spec, variant: str) -> dict[str, float]:
    """One GRPO or PPO step on ``parts.batch``: seconds per phase (CPU seconds on the CPU),
    their ``total`` and the step's ``wall`` seconds."""
    from dsm_engine.grpo.algorithms import (
        AlgorithmConfig,
        CoefficientInputs,
        LossSettings,
        coefficient,
        plan_update,
    )
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.critic import token_values, value_step
    from dsm_engine.grpo.step import grpo_updates, sequence_logprobs

    batch, mb = parts.batch, spec.micro_batch
    run = GRPOAlgoConfig(group_size=spec.group, micro_batch_size=mb)
    algo = AlgorithmConfig(name=variant)
    # on the CPU the phases are timed in process CPU seconds (all threads): on a shared
    # machine the wall time also counts other processes' work; on CUDA in wall seconds
    timer = time.process_time if spec.device == "cpu" else time.perf_counter
    times = dict.fromkeys(PHASES, 0.0)
    clock, wall = timer(), time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        _sync(spec.device)
        now = timer()
        times[phase] += now - clock
        clock = now

    kw = {"temperature": 1.0, "micro_batch_size": mb}
    ref, _ = sequence_logprobs(parts.reference, batch.tokens, batch.targets, **kw)
    old, _ = sequence_logprobs(parts.policy, batch.tokens, batch.targets, **kw)
    lap("logprobs")
    values = None
    if variant == "ppo":
        values = token_values(parts.critic, batch.tokens, micro_batch_size=mb)
        lap("values")
    x = CoefficientInputs(batch.rewards, batch.mask, spec.group, old, ref, values)
    coef = coefficient(algo, x, LossSettings.of(run))
    plan = plan_update(batch, coef, run)
    lap("advantages")
    idx = plan.index
    grpo_updates(
        parts.policy,
        parts.optimizer,
        parts.zero_grad,
        plan.batch,
        old[idx],
        ref[idx],
        plan.advantages,
        plan.config,
        temperature=1.0,
        finalize_grads=parts.finalize,
    )
    lap("policy_update")
    if variant == "ppo":
        value_step(
            parts.critic,
            parts.critic_optimizer,
            parts.critic_zero_grad,
            batch,
            values,
            coef.returns,
            clip=algo.value_clip,
            micro_batch_size=mb,
            finalize_grads=parts.critic_finalize,
        )
        lap("critic_update")
    times["total"] = sum(times[p] for p in PHASES)
    times["wall"] = time.perf_counter() - wall
    return times


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view of a buffer counts the
    buffer once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _optimizer_tensors(opt, model_params: set[int]) -> list[torch.Tensor]:
    """The state tensors of ``opt`` (TorchAdamW or megatron's) and its master copies (the
    parameters it steps that are not the model's)."""
    out = []
    # TorchAdamW wraps torch.optim.AdamW; megatron's ChainedOptimizer holds one mixed-precision
    # optimizer per parameter group kind, each wrapping an Adam over fp32 master copies
    for wrapper in getattr(opt, "chained_optimizers", [opt]):
        inner = wrapper.optimizer
        out += [v for state in inner.state.values() for v in state.values() if torch.is_tensor(v)]
        out += [
            p
            for group in inner.param_groups
            for p in group["params"]
            if p.untyped_storage().data_ptr() not in model_params
        ]
    return out


def static_bytes(parts: Parts) -> dict[str, int]:
    """Bytes of policy, reference and critic parameters, optimizer states and gradients."""
    models = {"policy": parts.policy, "reference": parts.reference, "critic": parts.critic}
    out = {
        name: _storage_bytes(m.parameters()) if m is not None else 0 for name, m in models.items()
    }
    pairs = [(parts.optimizer, parts.policy), (parts.critic_optimizer, parts.critic)]
    state, grads = [], []
    for opt, model in pairs:
        if opt is None:
            continue
        params = list(model.parameters())
        state += _optimizer_tensors(opt, {p.untyped_storage().data_ptr() for p in params})
        grads += [p.grad for p in params] + [getattr(p, "main_grad", None) for p in params]
    out["optimizer_states"] = _storage_bytes(state)
    out["gradients"] = _storage_bytes(grads)
    return out


def _import_all() -> None:
    for name in (
        "dsm_engine.grpo.algorithms",
        "dsm_engine.grpo.critic",
        "dsm_engine.grpo.step",
        "dsm_engine.models",
        "dsm_engine.trainers.optim",
        "megatron.core.distributed",
        "megatron.core.pipeline_parallel",
    ):
        importlib.import_module(name)


def measure(spec: Spec, variant: str) -> dict[str, Any]:
    """Build ``variant``'s parts, run ``1 + spec.repeats`` steps and return the step times,
    the peak memory over the baseline and the static parts.

    The baseline is taken after the imports and the parallel state; the peak is that of the
    timed steps (after one warm-up step, whose one-off lazy initialisations are not a step's),
    over that baseline: it holds everything built since (models, optimizer states)."""
    from dsm_engine.models import initialize_parallel

    cuda = spec.device == "cuda"
    _import_all()
    initialize_parallel(seed=spec.seed)
    if cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    parts = build_parts(spec, variant)
    steps = [step(parts, spec, variant)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    steps += [step(parts, spec, variant) for _ in range(spec.repeats)]
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - base
    static = static_bytes(parts)
    n_params = sum(p.numel() for p in parts.policy.parameters())
    return {"steps": steps, "peak": peak, "static": static, "policy_params": n_params}


def summary(variant: str, got: dict[str, Any]) -> dict[str, Any]:
    """A table row: median seconds per phase (over the timed steps) and MiB per part."""
    if "error" in got:
        return {"variant": variant, "error": got["error"]}
    timed = got["steps"][1:] or got["steps"]
    row: dict[str, Any] = {"variant": variant}
    for phase in (*PHASES, "total", "wall"):
        row[f"{phase} s"] = round(statistics.median(s[phase] for s in timed), 3)
    mib = 2**20
    row["peak MiB"] = round(got["peak"] / mib, 1)
    for name in STATIC:
        row[f"{name} MiB"] = round(got["static"][name] / mib, 1)
    row["rest MiB"] = round((got["peak"] - sum(got["static"].values())) / mib, 1)
    return row


def reading(rows: list[dict[str, Any]], raw: dict[str, dict[str, Any]]) -> str:
    """The one-line conclusion, computed from the numbers."""
    if any("error" in r for r in rows):
        return "A variant failed; no comparison."
    g, p = raw["grpo"], raw["ppo"]
    mem = p["peak"] / g["peak"]
    secs = statistics.median(s["total"] for s in p["steps"][1:] or p["steps"])
    secs /= statistics.median(s["total"] for s in g["steps"][1:] or g["steps"])
    extra = p["peak"] - g["peak"]
    # the critic's own static memory: its parameters, and the optimizer states and gradients
    # PPO holds beyond GRPO's (the policy's are the same in both)
    critic = p["static"]["critic"] + sum(
        p["static"][k] - g["static"][k] for k in ("optimizer_states", "gradients")
    )
    mib = 2**20
    return (
        f"PPO's step needs {mem:.2f}x the peak memory of GRPO's ({extra / mib:+.0f} MiB) and "
        f"{secs:.2f}x its time; the critic (parameters, gradients, optimizer states: "
        f"{critic / mib:.0f} MiB) is {100 * critic / p['peak']:.0f}% of PPO's peak, and the "
        f"measured difference is {100 * extra / max(critic, 1):.0f}% of it. Paper (§4.1): GRPO "
        "removes the value model, a model of the policy's size, with its training memory."
    )


def run(spec: Spec, out: Path, timeout: float) -> Path:
    """Each variant in its own process; writes ``ppo_vs_grpo[_cuda].{json,md}`` into ``out``."""
    env = run_info(("dsm-engine", "torch", "megatron-core"))
    raw, rows = {}, []
    for variant in VARIANTS:
        args = ["--child", variant, "--spec", json.dumps(dataclasses.asdict(spec))]
        raw[variant] = run_child(Path(__file__), args, timeout)
        rows.append(summary(variant, raw[variant]))
        print(json.dumps(rows[-1]), flush=True)
    env["load_avg_after"] = run_info()["load_avg_1m_5m_15m"]
    params = raw["grpo"].get("policy_params", 0)
    b = spec.prompts * spec.group
    memory = (
        "peak RSS over the RSS after imports (CPU, fp32, torch AdamW)"
        if spec.device == "cpu"
        else "torch.cuda.max_memory_allocated over the allocation before building (bf16, "
        "megatron-core optimizer with fp32 master weights and grad buffers)"
    )
    notes = [
        reading(rows, raw),
        f"Policy {params / 1e6:.1f}M params ({spec.model}); batch {spec.prompts} prompts x "
        f"{spec.group} responses = {b} rows of {spec.prompt_tokens} prompt + "
        f"{spec.response_tokens // 2}..{spec.response_tokens} response tokens, microbatch "
        f"{spec.micro_batch}; device {spec.device}; median of {spec.repeats} timed steps after "
        "one warm-up step (the peak is over the timed steps).",
        f"Memory: {memory}. Static parts are measured on the objects after the last step; "
        "rest = peak - static (activations, logits chunks, temporaries, allocator slack). "
        "optimizer_states: Adam's two moments (and fp32 master weights on CUDA) of the policy, "
        "plus the critic's for PPO; gradients likewise.",
        "logprobs: reference + old-policy passes; values: the critic's forward (PPO); "
        "advantages: the coefficient (group normalisation or GAE); policy_update: "
        "forward/backward + optimizer step; critic_update: value-loss forward/backward + "
        "optimizer step (PPO). On the CPU the phases and their total are process CPU "
        "seconds (all threads: the machine is shared, its load is recorded) and wall is the "
        "step's wall seconds; on CUDA all are wall seconds.",
    ]
    name = "ppo_vs_grpo" if spec.device == "cpu" else f"ppo_vs_grpo_{spec.device}"
    return write_results(name, rows, env, notes, out_dir=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, help="timed steps after the warm-up (default 2)")
    p.add_argument("--smoke", action="store_true", help="a toy size (seconds), for the tests")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(Spec(**json.loads(args.spec)), args.child)))
        return 0
    if args.device == "cuda" and not require_cuda("bench_ppo_vs_grpo"):
        return 0
    spec = smoke_spec() if args.smoke else gpu_spec() if args.device == "cuda" else Spec()
    spec = dataclasses.replace(spec, device=args.device, repeats=args.repeats or spec.repeats)
    run(spec, Path(args.out), args.timeout)
    return 0


def gpu_spec() -> Spec:
    """The ~1.2B ``dsm-1b`` architecture (bf16) and 8 prompts x 8 responses of up to 512
    tokens: about 40 GiB of static memory for PPO, within one 80 GB GPU."""
    from dsm_engine.models.config import MODEL_PRESETS

    fields = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size")
    model = {f: getattr(MODEL_PRESETS["dsm-1b"], f) for f in fields}
    return Spec(
        model=model,
        prompts=8,
        group=8,
        prompt_tokens=128,
        response_tokens=384,
        micro_batch=8,
        repeats=3,
    )


def smoke_spec() -> Spec:
    """A toy model and batch: every code path in seconds."""
    model = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "ffn_hidden_size": 128,
        "vocab_size": 256,
    }
    return Spec(
        model=model,
        prompts=2,
        group=4,
        prompt_tokens=8,
        response_tokens=24,
        micro_batch=4,
        repeats=1,
    )


if __name__ == "__main__":
    sys.exit(main())
