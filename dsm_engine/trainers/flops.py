"""Training FLOPs per token of the Llama architecture, for the MFU the trainers log.

The formula is the models layer's (``benchmarks/train/bench_model.py::flops_per_token``; a test
checks the two agree), so trainer logs and model benchmarks report comparable MFU:

    6 * N_matmul        dense matmuls, forward + backward (N_matmul = weights of the linear
                        layers incl. the LM head; embedding lookup and norms excluded)
  + 6 * L * s * h       causal attention scores and weighted sum, forward + backward

Activation recomputation is not counted: this is model FLOPs utilisation.
"""

from __future__ import annotations

from dsm_engine.models.config import ModelConfig


def train_flops_per_token(cfg: ModelConfig, seq_length: int | None = None) -> float:
    """Model training FLOPs per token at ``seq_length`` (default ``cfg.seq_length``)."""
    s = seq_length or cfg.seq_length
    h, layers = cfg.hidden_size, cfg.num_layers
    matmul_params = cfg.num_params() - cfg.vocab_size * h - (2 * layers + 1) * h
    return 6.0 * matmul_params + 6.0 * layers * s * h
