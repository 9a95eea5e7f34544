"""A tiny random Llama with the real GPT-NeoX tokenizer, saved as a Hugging Face folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory, neox_tokenizer_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    eos = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(neox_tokenizer_path), eos_token=eos, bos_token=eos, unk_token=eos
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
