"""Shared pieces of the GRPO tests: a tiny policy, a random rollout batch, and the paper's
GRPO objective written out directly in float64 on a Hugging Face copy of the policy."""

from __future__ import annotations

import torch

from dsm_engine.grpo.batch import GRPOBatch, build_batch

TINY = {
    "num_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "ffn_hidden_size": 64,
    "vocab_size": 64,
    "seq_length": 64,
    "init_method_std": 0.2,  # peaky distributions: ratios and KL far from trivial
}


class ParityReward:
    """A reward a random policy earns about half the time: the first response token is even."""

    def __init__(self, codec_path: str, **_: object) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(codec_path)

    def score(self, prompts, outputs, golds):
        out = []
        for text in outputs:
            ids = self.tok.encode(text, add_special_tokens=False).ids
            out.append(float(bool(ids) and ids[0] % 2 == 0))
        return out


def random_batch(
    seed: int, groups: int, group_size: int, vocab: int = 64, multiple_of: int = 1
) -> GRPOBatch:
    """Rows of random prompts and responses of varied lengths, padded to a multiple of
    ``multiple_of``; one group has equal rewards."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses, logps, rewards, finished = [], [], [], [], []
    for i in range(groups):
        p = torch.randint(3, vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)
        for _ in range(group_size):
            n = int(torch.randint(1, 9, (1,), generator=g))
            prompts.append(p.tolist())
            responses.append(torch.randint(3, vocab, (n,), generator=g).tolist())
            logps.append([0.0] * n)
            rewards.append(1.0 if i == 0 else float(torch.randint(0, 2, (1,), generator=g)))
            finished.append(True)
    return build_batch(
        prompts, responses, logps, rewards, finished, pad_id=0, multiple_of=multiple_of
    )


def with_rewards(batch: GRPOBatch, rewards: list[float]) -> GRPOBatch:
    """``batch`` with its rewards replaced (1: a correct sample, 0: a wrong one)."""
    out = batch.rows(slice(None))
    out.rewards = torch.tensor(rewards, dtype=torch.float32)
    return out


def planned_scenario(
    algorithm: str, rewards: list[list[float]], seed: int = 11, multiple_of: int = 1
) -> tuple:
    """A step of ``algorithm`` (``step_worker.planned_step_outputs``) whose data-parallel rank
    ``r`` holds the rows of ``rewards[r]`` (whole groups of 4, the same padded length on every
    rank), and the same step as one process over all those rows: ``(scenario, whole)``."""
    n = [len(r) for r in rewards]
    rows = random_batch(seed, sum(n) // 4, 4, multiple_of=multiple_of)
    batch = with_rewards(rows, [x for r in rewards for x in r])
    g = torch.Generator().manual_seed(seed)
    shift = 0.3 * torch.randn(batch.mask.shape, generator=g)  # reference = policy + shift
    bounds = [sum(n[:i]) for i in range(len(n) + 1)]
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    scenario = {
        "algorithm": algorithm,
        "batches": [batch.rows(sl) for sl in parts],
        "shifts": [shift[sl] for sl in parts],
    }
    whole = {"algorithm": algorithm, "batches": [batch], "shifts": [shift]}
    return scenario, whole


def assert_same_adam_step(got: torch.Tensor, want: torch.Tensor, grad: torch.Tensor, msg: str):
    """Parameters after one AdamW step equal where the step is well defined: its first step
    is ``lr·g/(|g| + eps)`` per element, so where ``|g|`` is near 0 a rounding of the gradient
    (a TP shard's, a DP rank's) flips it; elsewhere (and where no gradient reached: weight
    decay alone) the parameters agree to 1e-6."""
    sure = (grad.abs() > 1e-4) | (grad == 0)
    assert (grad.abs() > 1e-4).any(), msg
    torch.testing.assert_close(got[sure], want[sure], rtol=0, atol=1e-6, msg=msg)


@torch.no_grad()
def grads_as_hf(model, cfg) -> dict[str, torch.Tensor]:
    """The model's ``.grad`` tensors under Hugging Face names (gathered over TP)."""
    from dsm_engine.models.convert import export_hf_state_dict

    params = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    out = {k: v.detach().clone() for k, v in export_hf_state_dict(model, cfg).items()}
    for n, p in params.items():
        p.copy_(saved[n])
    return out


def paper_objective_fp64(
    hf_state: dict[str, torch.Tensor],
    cfg,
    batch: GRPOBatch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    group_size: int,
    eps: float,
    beta: float,
    temperature: float,
):
    """Loss = -J_GRPO (paper eq. 3, outcome supervision) in float64, with its gradients.

    J = 1/G Σ_i 1/|o_i| Σ_t [min(r A_i, clip(r, 1-ε, 1+ε) A_i) - β D_KL],
    r = π_θ/π_old, A_i = (R_i - mean(R)) / std(R) within the group,
    D_KL = π_ref/π_θ - log(π_ref/π_θ) - 1. Returns (advantages, loss, grads by HF name).
    """
    from transformers import LlamaForCausalLM

    from dsm_engine.models.convert import hf_config

    hcfg = hf_config(cfg)
    hcfg._attn_implementation = "eager"
    model = LlamaForCausalLM(hcfg).double()
    model.load_state_dict({k: v.double() for k, v in hf_state.items()})
    logits = model(input_ids=batch.tokens).logits.double() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None]).squeeze(-1)

    r = batch.rewards.double().view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = ((r - mean) ** 2).mean(dim=1, keepdim=True).sqrt()
    adv = ((r - mean) / (std + 1e-6)).view(-1, 1)
    ratio = torch.exp(logp - old_logp.double())
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    log_ref_over_pi = ref_logp.double() - logp
    kl = torch.exp(log_ref_over_pi) - log_ref_over_pi - 1
    m = batch.mask.double()
    per_seq = ((surrogate - beta * kl) * m).sum(1) / m.sum(1)
    loss = -per_seq.mean()
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    return adv.view(-1), loss.detach(), grads
