"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

A drop-in ``core_attention`` module for megatron-core's ``SelfAttention``: PyTorch picks its
flash / cuDNN / memory-efficient backend on GPU and a fused C++ kernel on CPU, instead of
megatron's unfused local attention that materialises the score matrix.

Layouts (megatron's): ``query`` [sq, b, np, hn], ``key``/``value`` [sk, b, ng, hn] (ng = query
groups on this TP rank; GQA is handled by SDPA's ``enable_gqa``), output [sq, b, np * hn].

``attention_mask`` (passed unchanged from ``GPTModel.forward`` through every layer and pipeline
stage) may be:

* ``None``: plain causal attention.
* a boolean tensor broadcastable to [b, 1, sq, sk] in megatron's convention, ``True`` = masked
  (must NOT be attended). Causality is added on top, so it only needs to express extra masking
  (padding, documents).
* an integer tensor [b, s] of per-token document ids (packed SFT / pretraining sequences):
  a token attends only to earlier tokens with the same id. Give ``position_ids`` restarting at
  every document to get per-document rotary positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide
from torch import Tensor


def allowed_mask(attention_mask: Tensor, sq: int, sk: int) -> Tensor:
    """Boolean [b|1, 1, sq, sk] mask, ``True`` = may attend, causal included.

    ``attention_mask`` is a boolean megatron mask (``True`` = masked) or [b, s] document ids.
    """
    device = attention_mask.device
    causal = torch.ones(sq, sk, dtype=torch.bool, device=device).tril(diagonal=sk - sq)
    if attention_mask.dtype == torch.bool:
        return ~attention_mask & causal
    if attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask: integer masks are per-token document ids of shape [b, s], "
            f"got shape {tuple(attention_mask.shape)}"
        )
    docs = attention_mask
    same_doc = docs[:, -sq:, None] == docs[:, None, :sk]
    return (same_doc & causal)[:, None]


class SDPAttention(MegatronModule):
    """Causal (optionally document-masked) attention via ``scaled_dot_product_attention``."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism")
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"SDPAttention is causal only, got attn_mask_type={attn_mask_type}")
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(head_dim)
        self.dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params=None,
    ) -> Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError(
                "SDPAttention: pass packed documents as attention_mask=[b, s] document ids; "
                "packed_seq_params / attention_bias are not supported"
            )
        sq, b = query.shape[0], query.shape[1]
        sk = key.shape[0]
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout = self.dropout_p if self.training else 0.0
        mask = None if attention_mask is None else allowed_mask(attention_mask, sq, sk)
        with self._rng():
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=mask is None,
                scale=self.softmax_scale,
                enable_gqa=self.heads != self.groups,
            )
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)

    def _rng(self):
        # Dropout inside a TP region draws from the tensor-parallel stream, like megatron's
        # own attention (with sequence parallelism the default stream is already per-rank).
        if self.dropout_p > 0 and self.training and not self.config.sequence_parallel:
            return tensor_parallel.get_cuda_rng_tracker().fork()
        import contextlib

        return contextlib.nullcontext()
