"""Training FLOPs per token of the Llama architecture (forward + backward = 3x forward).

Forward FLOPs per token: 2 per weight of every matmul (attention q/k/v/o projections, the three
SwiGLU matrices, the LM head) plus the attention scores and weighted sum, 2 * 2 * s * h per
layer for a full (non-causal-discounted) s x s score matrix. Embedding lookups and norms are
not counted. Training is 3x the forward (backward = 2x forward); activation recomputation is
not counted, so this is model FLOPs utilisation (MFU), not hardware utilisation.
"""

from __future__ import annotations

from dsm_engine.models.config import ModelConfig


def train_flops_per_token(cfg: ModelConfig, seq_length: int | None = None) -> float:
    """Model training FLOPs per token at ``seq_length`` (default ``cfg.seq_length``)."""
    s = seq_length or cfg.seq_length
    h, f, v, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.head_dim
    attn_proj = h * (cfg.num_attention_heads + 2 * cfg.kv_heads) * d + h * h
    mlp = 3 * h * f
    per_layer = 2 * (attn_proj + mlp) + 2 * 2 * s * h
    forward = cfg.num_layers * per_layer + 2 * h * v
    return 3.0 * forward
