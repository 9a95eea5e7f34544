"""The GRPO step benchmark compares like with like: on one batch and one policy, TRL's
``GRPOTrainer`` loss (``loss_type="grpo"``) equals ours, both the loss on log-probs
(``grpo_loss``) and the fused lm_head loss the trainer uses (``fused_linear_grpo_loss``)."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.kernels import fused_linear_grpo_loss, grpo_loss

pytest.importorskip("trl")

B, P, C, BETA, EPS = 4, 5, 7, 0.04, 0.2


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, shared_data):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    folder = tmp_path_factory.mktemp("policy")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    )
    tok.pad_token = tok.eos_token = "<|endoftext|>"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    args = GRPOConfig(
        output_dir=str(folder / "out"),
        use_cpu=True,
        per_device_train_batch_size=B,
        num_generations=2,
        max_completion_length=C,
        beta=BETA,
        epsilon=EPS,
        loss_type="grpo",
        report_to=[],
        save_strategy="no",
        bf16=False,
        # TRL >= 1.x weights the KL term by pi/pi_old by default; the paper (and we) do not
        use_bias_correction_kl=False,
    )
    data = Dataset.from_list([{"prompt": "1 + 1 ="}, {"prompt": "2 + 2 ="}])
    t = GRPOTrainer(
        model=str(folder),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=data,
        processing_class=tok,
    )
    t.model.eval()  # no gradient-accumulation scaling of the returned loss
    return t


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    completion_mask = torch.ones(B, C, dtype=torch.long)
    completion_mask[1, 4:] = 0  # a short response
    completion_mask[3, 2:] = 0
    return {
        "prompt_ids": torch.randint(0, vocab, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(0, vocab, (B, C), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.7, -1.2]),
    }


def test_trl_grpo_loss_equals_ours_on_one_batch(trainer):
    model = trainer.model
    inputs = _batch(model.config.vocab_size)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        logits = out.logits[:, P - 1 : -1].float()  # (B, C, V): the completion's predictions
        logp = torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"][..., None])[..., 0]
        hidden = out.hidden_states[-1][:, P - 1 : -1]  # (B, C, H) after the final norm
    g = torch.Generator().manual_seed(2)
    # old/ref away from the policy on both sides, so both clip branches and the KL term count
    inputs["old_per_token_logps"] = logp + 0.3 * torch.randn(B, C, generator=g)
    inputs["ref_per_token_logps"] = logp + 0.3 * torch.randn(B, C, generator=g)
    with torch.no_grad():
        theirs = trainer._compute_loss(model, inputs)

    mask = inputs["completion_mask"].bool()
    kw = {"advantages": inputs["advantages"], "beta": BETA, "clip_eps_low": EPS}
    kw.update(clip_eps_high=EPS, loss_agg="seq-mean-token-mean", impl="torch")
    old, ref = inputs["old_per_token_logps"], inputs["ref_per_token_logps"]
    ours, _ = grpo_loss(logp, old, ref, mask, **kw)
    fused, _ = fused_linear_grpo_loss(
        hidden.contiguous(),
        model.lm_head.weight.detach(),
        inputs["completion_ids"],
        old,
        ref,
        mask,
        **kw,
    )
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, theirs.float(), rtol=1e-4, atol=1e-5)
    assert theirs.abs() > 1e-3  # a loss that could have differed
