"""The transformer-engine layer spec is chosen only when TE really loads.

megatron-core 0.16.1's ``megatron.core.extensions.transformer_engine`` imports without TE (it
puts a MagicMock in TE's place), so importing its TE classes proves nothing; ``HAVE_TE`` must
follow whether ``transformer_engine`` itself imports.
"""

from __future__ import annotations

import importlib.util

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from dsm_engine.models import build


def _te_importable() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        from transformer_engine.pytorch.fp8 import FP8GlobalStateManager, fp8_autocast  # noqa: F401
    except ImportError:
        return False
    return True


def test_have_te_follows_whether_transformer_engine_imports():
    assert _te_importable() == build.HAVE_TE
    assert build.use_transformer_engine() == (_te_importable() and torch.cuda.is_available())


def test_local_spec_has_megatron_linears_and_local_norms():
    sub = build.layer_spec(te=False).submodules
    attn = sub.self_attention.submodules
    assert attn.linear_qkv is ColumnParallelLinear and attn.linear_proj is RowParallelLinear
    assert sub.mlp.submodules.linear_fc1 is ColumnParallelLinear
    assert sub.input_layernorm is build.RMSNorm and sub.pre_mlp_layernorm is build.RMSNorm
