"""Fixtures for the model tests: tiny random Hugging Face Llama folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hf_tiny_dirs(tmp_path_factory, neox_tokenizer_path) -> dict[str, Path]:
    """``{"tiny": dir, "tiny-gqa": dir}``: random LlamaForCausalLM saved with save_pretrained."""
    import torch
    from transformers import LlamaForCausalLM

    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config

    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in ("tiny", "tiny-gqa"):
        torch.manual_seed(0)
        folder = root / name
        LlamaForCausalLM(hf_config(model_config(name))).save_pretrained(str(folder))
        shutil.copy(neox_tokenizer_path, folder / "tokenizer.json")
        out[name] = folder
    return out
