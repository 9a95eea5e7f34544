"""Triton kernels under the CPU interpreter, before and after a megatron-core model ran in the
same process. Run by test_interpreter_after_megatron.py as a subprocess (a crash there fails
that test instead of killing pytest), with the checkout root first on sys.path as under
``python -m pytest``. Prints one ``OK <stage>`` line per stage that matched float64.

Stages, in the order a user script meets them:
1. ``import megatron.core`` first: it imports triton while the interpreter is still off.
2. Triton kernels (fwd+bwd) against float64 references.
3. A tiny megatron GPT: forward+backward on CPU (megatron's torch.compile'd fusions run), and a
   Hugging Face Llama import as the GRPO tests do (transformers probes the name ``kernels``).
4. The same kernels again, and no module named ``kernels`` may come from the checkout's folder
   (transformers must get Hugging Face's package under that name).
"""

from __future__ import annotations

import sys
from pathlib import Path

import megatron.core  # noqa: F401  (stage 1: before dsm_engine.kernels on purpose)
import torch

from dsm_engine.kernels import (
    fused_linear_grpo_loss,
    fused_linear_grpo_loss_ref,
    grpo_loss,
    grpo_loss_ref,
    kl_k3,
    kl_k3_ref,
    logprobs_from_logits,
    logprobs_from_logits_ref,
)

B, T, H, V, GROUP = 4, 6, 16, 150, 2


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * (3 / H**0.5)
    targets = torch.randint(0, V, (B, T), generator=g)
    logp = logprobs_from_logits_ref(hidden.reshape(-1, H) @ weight.T, targets.reshape(-1))
    old = (logp + 0.3 * torch.randn(B * T, generator=g)).reshape(B, T)
    ref = (logp + 0.2 * torch.randn(B * T, generator=g)).reshape(B, T)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[0] = True
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    return dict(
        hidden=hidden, weight=weight, targets=targets, old=old, ref=ref, mask=mask, rewards=rewards
    )


def _close(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    if not err <= 1e-5 * scale + 2e-5:
        raise AssertionError(f"{name}: error {err:.3g} vs float64")


def check_kernels(stage: str, seed: int) -> None:
    x = _inputs(seed)
    grpo_kw = dict(rewards=x["rewards"], group_size=GROUP)

    hd = x["hidden"].clone().requires_grad_()
    wt = x["weight"].clone().requires_grad_()
    loss, _ = fused_linear_grpo_loss(
        hd, wt, x["targets"], x["old"], x["ref"], x["mask"], impl="triton", **grpo_kw
    )
    loss.backward()
    hr = x["hidden"].double().requires_grad_()
    wr = x["weight"].double().requires_grad_()
    loss_r, _ = fused_linear_grpo_loss_ref(
        hr, wr, x["targets"], x["old"].double(), x["ref"].double(), x["mask"], **grpo_kw
    )
    loss_r.backward()
    _close(f"{stage} fused_linear_grpo_loss", loss, loss_r)
    _close(f"{stage} fused_linear_grpo_loss grad_hidden", hd.grad, hr.grad)
    _close(f"{stage} fused_linear_grpo_loss grad_weight", wt.grad, wr.grad)

    logits = (x["hidden"].reshape(-1, H) @ x["weight"].T).requires_grad_()
    logp = logprobs_from_logits(logits, x["targets"].reshape(-1), impl="triton")
    lp = logp.detach().reshape(B, T).requires_grad_()
    g_loss, _ = grpo_loss(lp, x["old"], x["ref"], x["mask"], impl="triton", **grpo_kw)
    g_loss.backward()
    logp.sum().backward()
    logits_r = logits.detach().double().requires_grad_()
    logp_r = logprobs_from_logits_ref(logits_r, x["targets"].reshape(-1))
    logp_r.sum().backward()
    lp_r = lp.detach().double().requires_grad_()
    g_loss_r, _ = grpo_loss_ref(lp_r, x["old"].double(), x["ref"].double(), x["mask"], **grpo_kw)
    g_loss_r.backward()
    _close(f"{stage} logprobs_from_logits", logp, logp_r)
    _close(f"{stage} logprobs_from_logits grad", logits.grad, logits_r.grad)
    _close(f"{stage} grpo_loss", g_loss, g_loss_r)
    _close(f"{stage} grpo_loss grad", lp.grad, lp_r.grad)

    kl = kl_k3(x["old"], x["ref"], impl="triton")
    _close(f"{stage} kl_k3", kl, kl_k3_ref(x["old"].double(), x["ref"].double()))
    print(f"OK {stage}", flush=True)


def run_tiny_megatron_model() -> None:
    from transformers import LlamaForCausalLM  # noqa: F401  (the GRPO tests' HF twin)

    from dsm_engine.models import (
        ParallelConfig,
        build_model,
        destroy_parallel,
        initialize_parallel,
        model_config,
        model_logits,
    )

    ctx = initialize_parallel(ParallelConfig(tp=1), seed=1)
    model = build_model(model_config("tiny"), ctx)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    model_logits(model, ids).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    destroy_parallel()
    print("OK megatron forward+backward", flush=True)


def main() -> int:
    check_kernels("before model", seed=0)
    run_tiny_megatron_model()
    check_kernels("after model", seed=1)
    ours = Path(__file__).resolve().parents[2] / "kernels"
    twice = sorted(
        name
        for name, module in list(sys.modules.items())
        if name.split(".")[0] == "kernels"
        and Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(ours)
    )
    if twice:
        raise AssertionError(f"the kernels folder was imported a second time as {twice}")
    print("OK kernels folder loaded once", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
